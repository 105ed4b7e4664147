"""Tests for samplecnn_jax.stream: detection timing, smoothing and the refractory period on a
constructed stream (a network whose scores are known), reading PCM to EOF, and clear errors
for streams that are not raw PCM."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import one_error_line
from trained_run import make_run

from samplecnn_jax import export, scoring, segments, stream, testing
from samplecnn_jax.workdir_files import LabelInfo

RATE = 16000
PROG = "python -m samplecnn_jax.stream"
YES, NO = 0.5, -0.5  # Sample values the fake network recognises as the words.


def _network(batch: np.ndarray) -> dict[str, np.ndarray]:
  """Scores are the fractions of the window that hold each word's value; the rest is silence."""
  yes = np.mean(np.isclose(batch, YES), axis=1)
  no = np.mean(np.isclose(batch, NO), axis=1)
  return {scoring.PROBABILITIES: np.stack([yes, no, 1 - yes - no], axis=1).astype(np.float32)}


def _scorer(labels=None) -> scoring.ClipScorer:
  labels = labels or LabelInfo(("yes", "no", "_silence_"), "multi_class")
  inputs = scoring.ClipInputs(RATE, 1600, 1, segments.InputScaling(False, 0.0, 1.0))
  return scoring.ClipScorer(_network, inputs, labels, batch_size=8, threshold=0.5)


def _stream(*parts: tuple[float, float]) -> np.ndarray:
  """Concatenated (value, seconds) pieces at RATE."""
  return np.concatenate([np.full(round(s * RATE), v, np.float32) for v, s in parts])


def _spot(audio: np.ndarray, pieces: int = 1, **options) -> list[stream.Detection]:
  spotter = stream.Spotter(_scorer(), hop=1600, **options)
  found = []
  for piece in np.array_split(audio, pieces):
    found += spotter.feed(piece)
    assert len(spotter.buffer) <= 1600 + len(piece)  # Bounded: one window plus one read.
  return found


def test_a_word_fires_once_when_its_smoothed_score_passes_and_again_after_the_refractory():
  # "yes" in 1.0-1.5 s and 2.5-3.0 s. Windows of 0.1 s end every 0.1 s; smoothed over 3, the
  # score of "yes" is 1/3 at 1.1 s and 2/3 at 1.2 s: it fires at 1.2 s, then not for 1 s.
  audio = _stream((0, 1.0), (YES, 0.5), (0, 1.0), (YES, 0.5), (NO, 0.6), (0, 0.5))
  found = _spot(audio, smooth=3, refractory_s=1.0)
  assert [(d.label, round(d.time_s, 3)) for d in found] == [
      ("yes", 1.2), ("yes", 2.7), ("no", 3.2)]
  assert all(d.score >= 0.5 for d in found)
  # The silence class scores 1 most of the time but is background: it never fires.
  assert "_silence_" not in {d.label for d in found}
  # A longer refractory period swallows the second "yes" (1.5 s after the first).
  assert [d.label for d in _spot(audio, smooth=3, refractory_s=2.0)] == ["yes", "no"]
  # Without smoothing, the first window full of the word fires.
  assert round(_spot(audio, smooth=1)[0].time_s, 3) == 1.1


def test_detections_do_not_depend_on_how_the_stream_is_cut():
  audio = _stream((0, 0.7), (YES, 0.4), (0, 0.9), (NO, 0.5), (0, 0.3))
  whole = _spot(audio)
  assert len(whole) == 2
  assert _spot(audio, pieces=37) == whole == _spot(audio, pieces=len(audio) // 100)


def test_eval_label_maps_spot_the_scoring_classes():
  """Speech Commands: training classes summed into scoring classes; _unknown_ never fires."""
  labels = LabelInfo(("yes", "no", "bird"), "multi_class", ("yes", "_unknown_"), (0, 1, 1))
  spotter = stream.Spotter(_scorer(labels), hop=1600, smooth=1)
  found = spotter.feed(_stream((NO, 0.5), (YES, 0.3)))
  assert [d.label for d in found] == ["yes"]


def test_pcm_blocks_read_to_eof_and_refuse_what_is_not_pcm():
  pcm = (np.arange(-500, 500, dtype=np.int16) * 30).tobytes()
  blocks = list(stream.pcm_blocks(io.BufferedReader(io.BytesIO(pcm)), read_bytes=301))
  np.testing.assert_array_equal(np.concatenate(blocks),
                                np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
  assert list(stream.pcm_blocks(io.BytesIO(b""))) == []
  wav = io.BytesIO()
  sf.write(wav, np.zeros(100, np.float32), RATE, format="WAV")
  for data, message in ((wav.getvalue(), "stdin holds a WAV file, not raw PCM"),
                        (b"hello, this is text and not audio\n" * 4, "stdin holds text"),
                        (pcm + b"\x01", "ended in the middle of a 16-bit sample")):
    with pytest.raises(ValueError, match=message):
      list(stream.pcm_blocks(io.BytesIO(data)))


# --- The command, on an exported model ------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module")
def onnx_file(run):
  out = run["root"] / "model.onnx"
  assert export.main(["export", f"--workdir={run['workdir']}", f"--out={out}"]) == 0
  return out


class _Stdin:
  def __init__(self, data: bytes):
    self.buffer = io.BytesIO(data)


def _noise(seconds: float, rate: int = RATE) -> np.ndarray:
  return (0.1 * np.random.default_rng(0).standard_normal(round(seconds * rate))).astype(np.float32)


def test_command_reads_stdin_to_eof_and_prints_json_lines(onnx_file, monkeypatch, capsys):
  """With threshold 0 every class fires at the first window, then every refractory period."""
  pcm = (_noise(2.0) * 32767).astype("<i2").tobytes()
  monkeypatch.setattr(sys, "stdin", _Stdin(pcm))
  argv = [PROG, f"--model={onnx_file}", "--threshold=0", "--refractory_s=0.5", "--hop_ms=100"]
  assert stream.main(argv) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  times = sorted({line["time_s"] for line in lines})
  first = 729 / RATE  # The first window ends when input_size samples have arrived.
  assert times[0] == pytest.approx(first, abs=1e-3)
  assert all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:], strict=False))
  assert len(lines) == 6 * len(times) and set(lines[0]) == {"time_s", "label", "score"}


def test_workdir_and_model_detect_the_same(run, onnx_file, monkeypatch, capsys):
  pcm = (_noise(1.5) * 32767).astype("<i2").tobytes()
  found = {}
  for flag in (f"--workdir={run['workdir']}", f"--model={onnx_file}"):
    monkeypatch.setattr(sys, "stdin", _Stdin(pcm))
    assert stream.main([PROG, flag, "--threshold=0.3", "--refractory_s=0.3"]) == 0
    found[flag[:7]] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(found["--workd"]) == len(found["--model"]) > 0
  for ours, theirs in zip(found["--model"], found["--workd"], strict=True):
    assert (ours["time_s"], ours["label"]) == (theirs["time_s"], theirs["label"])
    assert abs(ours["score"] - theirs["score"]) <= 2e-4  # Both rounded to 4 decimals.


def test_command_reads_a_file_at_another_rate(onnx_file, tmp_path, capsys):
  path = tmp_path / "clip.flac"
  sf.write(path, _noise(1.5, 44100), 44100)
  assert stream.main([PROG, f"--model={onnx_file}", f"--input={path}", "--threshold=0"]) == 0
  assert json.loads(capsys.readouterr().out.splitlines()[0])["time_s"] == pytest.approx(
      729 / RATE, abs=1e-3)


@pytest.mark.parametrize("data, expected", [
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), "stdin holds a WAV file"),
    (b"0.1 0.2 0.3 0.4 0.5 0.6 0.7\n" * 10, "stdin holds text"),
    (bytes(3), "middle of a 16-bit sample"),
])
def test_a_garbage_stream_exits_2_with_one_line(onnx_file, monkeypatch, capsys, data, expected):
  monkeypatch.setattr(sys, "stdin", _Stdin(data))
  assert stream.main([PROG, f"--model={onnx_file}"]) == 2
  assert expected in one_error_line(capsys.readouterr().err, PROG)


def test_usage_errors_exit_2(onnx_file, tmp_path, capsys):
  garbage = tmp_path / "garbage.wav"
  garbage.write_bytes(b"RIFF" + bytes(range(256)))
  for argv, expected in (([], "--workdir=DIR or --model=FILE.onnx"),
                         ([f"--model={onnx_file}", "--hop_ms=0"], "--hop_ms=0.0"),
                         ([f"--model={onnx_file}", f"--input={garbage}"],
                          "not a readable audio file")):
    assert stream.main([PROG, *argv]) == 2
    assert expected in capsys.readouterr().err


def test_a_samplecnn_export_reuses_blocks_and_detects_as_whole_windows(tmp_path, monkeypatch,
                                                                       capsys):
  config = testing.load_config("test", "samplecnn")
  labels = LabelInfo(tuple(f"word{i}" for i in range(config.num_classes - 1)) + ("_silence_",),
                     "multi_class")
  model = tmp_path / "samplecnn.onnx"
  model.write_bytes(export.onnx_model(config, testing.random_variables(config), labels
                                      ).SerializeToString())
  pcm = (_noise(3.0) * 32767).astype("<i2").tobytes()
  found, notes = {}, {}
  for flag in ("--incremental", "--noincremental"):
    monkeypatch.setattr(sys, "stdin", _Stdin(pcm))
    argv = [PROG, f"--model={model}", flag, "--hop_ms=20.25", "--threshold=0", "--smooth=1",
            "--refractory_s=0.1"]
    assert stream.main(argv) == 0
    out, err = capsys.readouterr()
    found[flag], notes[flag] = [json.loads(line) for line in out.splitlines()], err
  assert "hop 324 samples" in notes["--incremental"] and "reusing block 1 " in notes[
      "--incremental"]
  assert "scoring every window whole" in notes["--noincremental"]
  assert len(found["--incremental"]) == len(found["--noincremental"]) > 10
  for ours, theirs in zip(found["--incremental"], found["--noincremental"], strict=True):
    assert (ours["time_s"], ours["label"]) == (theirs["time_s"], theirs["label"])
    assert abs(ours["score"] - theirs["score"]) <= 2e-4


def test_workdir_and_model_of_a_samplecnn_reuse_blocks_and_detect_the_same(
    tmp_path_factory, monkeypatch, capsys):
  run = make_run(tmp_path_factory.mktemp("samplecnn"), variant="samplecnn")
  model = run["root"] / "model.onnx"
  assert export.main(["export", f"--workdir={run['workdir']}", f"--out={model}"]) == 0
  pcm = (_noise(2.0) * 32767).astype("<i2").tobytes()
  found, notes = {}, {}
  for flag in (f"--workdir={run['workdir']}", f"--model={model}"):
    monkeypatch.setattr(sys, "stdin", _Stdin(pcm))
    assert stream.main([PROG, flag, "--hop_ms=20", "--threshold=0", "--smooth=1",
                        "--refractory_s=0.1"]) == 0
    out, notes[flag[:7]] = capsys.readouterr()
    found[flag[:7]] = [json.loads(line) for line in out.splitlines()]
  for note in notes.values():  # 20 ms -> 324 samples, 36 frames of 9 at block 1.
    assert "hop 324 samples" in note and "reusing block 1 " in note
  assert len(found["--workd"]) == len(found["--model"]) > 10
  for ours, theirs in zip(found["--model"], found["--workd"], strict=True):
    assert (ours["time_s"], ours["label"]) == (theirs["time_s"], theirs["label"])
    assert abs(ours["score"] - theirs["score"]) <= 2e-4
