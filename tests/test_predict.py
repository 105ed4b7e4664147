"""Tests for samplecnn_jax.predict: a real checkpointed workdir, real audio files of many
formats, the CLI outputs, and agreement with evaluation, with arrays and across batchings."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, load_config

from samplecnn_jax import (
  audio,
  checkpointing,
  evaluate,
  models,
  predict,
  prepare,
  sharding,
  store,
  train,
)
from samplecnn_jax import workdir as workdir_files

RATE = 16000
BROKEN = ("g_corrupt.wav", "h_empty.flac")
NUM_TEST_CLIPS = 4


def _tone(seconds: float, rate: int, freq: float, seed: int, channels: int = 1) -> np.ndarray:
  """A noisy tone, different per seed, so different files get different scores."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  mono = 0.4 * np.sin(2 * np.pi * freq * t) + 0.2 * rng.standard_normal(len(t))
  if channels == 1:
    return mono.astype(np.float32)
  return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir as training leaves it: config.json, a best checkpoint, labels.json."""
  root = tmp_path_factory.mktemp("predict")
  data_dir = root / "store"
  manifest = prepare.prepare("demo", None, data_dir, workers=1, num_train=1, num_valid=1,
                             num_test=NUM_TEST_CLIPS, progress=False)
  config = load_config("test")
  config.data_dir = str(data_dir)
  model = models.create_model(config.model, config.num_classes)
  state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(7)))
  workdir = root / "workdir"
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save_best(state, {"best_value": 0.5, "best_step": 0})
  ckpt.close()
  workdir_files.write_config(workdir, config)
  labels = {"vocabulary": manifest["vocabulary"], "label_type": manifest["label_type"]}
  store.write_json(workdir / predict.LABELS_FILE, labels)
  return {"workdir": workdir, "config": config, "state": state, "data_dir": data_dir,
          "vocabulary": manifest["vocabulary"], "root": root}


@pytest.fixture(scope="module")
def predictor(run):
  return predict.Predictor.from_workdir(run["workdir"])


@pytest.fixture(scope="module")
def audio_dir(run):
  """Files in every supported shape: formats, rates, channels, lengths, and broken ones."""
  folder = run["root"] / "audio"
  (folder / "nested" / ".hidden").mkdir(parents=True)
  sf.write(folder / "a_int16_mono_16k.wav", _tone(0.5, RATE, 440, 0), RATE, subtype="PCM_16")
  sf.write(folder / "b_float_stereo_44k.wav", _tone(1.0, 44100, 1000, 1, channels=2), 44100,
           subtype="FLOAT")
  sf.write(folder / "c_short.wav", _tone(300 / RATE, RATE, 2000, 2), RATE, subtype="PCM_16")
  sf.write(folder / "nested" / "d_long_22k.flac", _tone(4.0, 22050, 150, 3), 22050)
  sf.write(folder / "e_vorbis.ogg", _tone(1.0, RATE, 3000, 4), RATE, format="OGG",
           subtype="VORBIS")
  if "MP3" in sf.available_formats():
    sf.write(folder / "f_song.mp3", _tone(1.0, 44100, 600, 5), 44100, format="MP3",
             subtype="MPEG_LAYER_III")
  (folder / "g_corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(400))
  (folder / "h_empty.flac").write_bytes(b"")
  (folder / "notes.txt").write_text("not audio")
  sf.write(folder / "nested" / ".hidden" / "skipped.wav", _tone(0.2, RATE, 500, 6), RATE)
  return folder


def _by_name(results):
  return {r["file"].rsplit("/", 1)[-1]: r for r in results}


def test_predict_files_scores_every_readable_format_and_reports_broken_files(
    predictor, audio_dir
):
  files, notes = predict.find_audio_files([audio_dir])
  names = [f.name for f in files]
  assert "notes.txt" not in names and "skipped.wav" not in names and not notes
  assert files == sorted(files)
  results = _by_name(predictor.predict_files(files, top_k=3, threshold=0.5))
  assert results["g_corrupt.wav"]["error"].startswith(("corrupt", "unsupported_format"))
  assert results["h_empty.flac"]["error"].startswith("empty")
  assert results["g_corrupt.wav"]["scores"] == {} and results["g_corrupt.wav"]["top_k"] == []
  good = {n: r for n, r in results.items() if n not in BROKEN}
  assert len(good) == len(files) - 2 >= 5
  vocabulary = list(predictor.labels.vocabulary)
  for name, r in good.items():
    assert r["error"] is None, name
    assert list(r["scores"]) == vocabulary
    scores = np.array(list(r["scores"].values()))
    assert np.all((scores >= 0) & (scores <= 1)), name
    top = [t["score"] for t in r["top_k"]]
    assert len(top) == 3 and top == sorted(top, reverse=True)
    assert top[0] == scores.max()
    assert set(r["above_threshold"]) == {k for k, v in r["scores"].items() if v >= 0.5}
    assert r["num_segments"] == 2  # config.eval_segments, also for the 300-sample clip.
  assert good["d_long_22k.flac"]["duration_s"] == pytest.approx(4.0)
  assert good["c_short.wav"]["duration_s"] == pytest.approx(300 / RATE, abs=1e-3)
  # Different audio gives different scores: the equality tests below are not vacuous.
  assert len({tuple(r["scores"].values()) for r in good.values()}) == len(good)


def test_arrays_give_the_same_scores_as_files(predictor, audio_dir):
  files = [f for f in predict.find_audio_files([audio_dir])[0] if f.suffix in (".wav", ".flac")]
  files = [f for f in files if f.name not in BROKEN]
  from_files = predictor.predict_files(files)
  for path, result in zip(files, from_files, strict=True):
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # (frames, channels)
    expected = np.array(list(result["scores"].values()))
    np.testing.assert_allclose(predictor.predict_waveform(data, rate), expected, atol=1e-6)
    # librosa's (channels, frames) layout is recognised too.
    np.testing.assert_allclose(predictor.predict_waveform(data.T, rate), expected, atol=1e-6)
  int16 = (np.clip(_tone(0.5, RATE, 440, 0), -1, 32767 / 32768) * 32768).astype(np.int16)
  np.testing.assert_allclose(
      predictor.predict_waveform(int16, RATE),
      predictor.predict_waveform(int16.astype(np.float32) / 32768, RATE), atol=1e-7,
  )


def test_batching_across_files_matches_one_file_at_a_time(run, predictor, audio_dir, capsys):
  files = predict.find_audio_files([audio_dir])[0]
  together = predictor.predict_files(files, num_threads=3, progress=True)
  assert f"{len(files)}/{len(files)}" in capsys.readouterr().err  # The progress bar.
  alone = [predictor.predict_files([f], num_threads=1)[0] for f in files]
  assert [r["file"] for r in together] == [str(f) for f in files]
  for a, b in zip(together, alone, strict=True):
    assert a["error"] == b["error"]
    np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-6)
  # 3 segments per clip in batches of 8: clips straddle batch boundaries.
  variables = checkpointing.load_variables(run["workdir"], run["config"])
  odd = predict.Predictor(run["config"], variables, predictor.labels, num_segments=3)
  waves = [_tone(s, RATE, 300 * (i + 1), 10 + i) for i, s in enumerate((0.3, 1.0, 0.05, 2.0, 0.6))]
  batch = odd.predict_batch(waves, RATE)
  single = np.stack([odd.predict_waveform(w, RATE) for w in waves])
  assert batch.shape == (5, 6)
  np.testing.assert_allclose(batch, single, atol=1e-6)


def test_scores_match_evaluation_of_the_prepared_store(run, predictor, tmp_path):
  """Clips written from the store as wav get exactly the clip scores `train.evaluate` gives."""
  setup = train.setup(run["config"], str(run["workdir"]))
  variables = sharding.replicate(train.model_variables(run["state"]), setup.mesh)
  evaluator = evaluate.Evaluator(setup.config, setup.store, setup.mesh, setup.steps.eval_step)
  _, arrays = evaluator.evaluate(variables, "test")
  clips = store.ClipSource(run["data_dir"], "test")
  paths = []
  for i in range(len(clips)):
    paths.append(tmp_path / f"{clips[i]['clip_id']}.wav")
    sf.write(paths[-1], clips[i]["audio"], RATE, subtype="PCM_16")
  results = predictor.predict_files(paths)
  got = np.array([list(r["scores"].values()) for r in results])
  assert got.shape == arrays["scores"].shape == (NUM_TEST_CLIPS, 6)
  np.testing.assert_allclose(got, arrays["scores"], atol=1e-6)


def test_cli_writes_json_csv_and_table(run, audio_dir, tmp_path, capsys):
  out_json = tmp_path / "out.json"
  argv = [f"--workdir={run['workdir']}", str(audio_dir), "--top_k=2", "--threshold=0.4",
          "--no_progress"]
  assert predict.main([*argv, f"--output={out_json}"]) == 0
  data = json.loads(out_json.read_text())
  assert data["labels"] == run["vocabulary"] and data["threshold"] == 0.4
  assert data["segments"] == 2 and data["sample_rate"] == RATE
  files = _by_name(data["files"])
  assert files["g_corrupt.wav"]["error"] and files["a_int16_mono_16k.wav"]["error"] is None
  assert all(len(r["top_k"]) == (0 if r["error"] else 2) for r in data["files"])
  assert set(files["b_float_stereo_44k.wav"]) >= {
      "file", "error", "duration_s", "num_segments", "scores", "top_k", "above_threshold"}
  assert "2 failed" in capsys.readouterr().err

  out_csv = tmp_path / "out.csv"
  assert predict.main([*argv, f"--output={out_csv}"]) == 0
  with open(out_csv, newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["file", "error", "top_k", "above_threshold", *run["vocabulary"]]
  assert [r["file"] for r in rows] == [r["file"] for r in data["files"]]
  for row, record in zip(rows, data["files"], strict=True):
    if record["error"]:
      assert row["error"] == record["error"] and row["beep"] == ""
      continue
    for label in run["vocabulary"]:
      assert float(row[label]) == pytest.approx(record["scores"][label], abs=1e-6)
    assert row["top_k"].split(";")[0].split(":")[0] == record["top_k"][0]["label"]
    assert row["above_threshold"] == ";".join(record["above_threshold"])

  capsys.readouterr()
  assert predict.main([*argv, str(audio_dir / "a_int16_mono_16k.wav")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert any("ERROR corrupt" in line or "ERROR unsupported" in line for line in lines)
  table = [line for line in lines if "a_int16_mono_16k.wav" in line]
  assert len(table) == 2 and files["a_int16_mono_16k.wav"]["top_k"][0]["label"] in table[0]


def test_cli_exit_codes(run, audio_dir, tmp_path, capsys):
  # Nothing readable: exit 1, the failures still printed.
  assert predict.main([f"--workdir={run['workdir']}", str(audio_dir / "g_corrupt.wav")]) == 1
  assert "ERROR" in capsys.readouterr().out
  empty = tmp_path / "empty_folder"
  empty.mkdir()
  assert predict.main([f"--workdir={run['workdir']}", str(empty)]) == 1
  assert "no audio files" in capsys.readouterr().err
  # A workdir without checkpoints: exit 2 with the fix.
  bare = tmp_path / "bare"
  workdir_files.write_config(bare, run["config"])
  assert predict.main([f"--workdir={bare}", str(audio_dir)]) == 2
  assert "No best checkpoint" in capsys.readouterr().err
  assert predict.main([f"--workdir={run['workdir']}", "--output=x.txt", str(audio_dir)]) == 2
  assert ".json or .csv" in capsys.readouterr().err
  # The module entry point, on a workdir that does not exist.
  proc = subprocess.run(
      [sys.executable, "-m", "samplecnn_jax.predict", f"--workdir={tmp_path / 'nope'}", "x.wav"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_labels_come_from_labels_json_then_the_store_manifest_then_numbers(run, tmp_path):
  config = run["config"]
  labels = predict.load_labels(run["workdir"], config)
  assert labels.vocabulary == tuple(run["vocabulary"])
  assert labels.source.endswith(predict.LABELS_FILE)
  # Without labels.json: the store manifest at config.data_dir.
  labels = predict.load_labels(tmp_path, config)
  assert labels.vocabulary == tuple(run["vocabulary"])
  assert labels.source.endswith(store.MANIFEST)
  # Neither: numbered names.
  lost = config.copy_and_resolve_references()
  lost.data_dir = str(tmp_path / "gone")
  assert predict.load_labels(tmp_path, lost).vocabulary[:2] == ("class_0", "class_1")
  store.write_json(tmp_path / "wrong.json", {"vocabulary": ["a", "b"]})
  with pytest.raises(ValueError, match="names 2 classes but the model has"):
    predict.load_labels(tmp_path, config, str(tmp_path / "wrong.json"))


def test_multi_class_with_eval_label_map(run, audio_dir, tmp_path):
  """Speech Commands style: softmax scores and the coarser scoring label of the argmax."""
  workdir = tmp_path / "sc"
  shutil.copytree(run["workdir"] / "best", workdir / "best")
  config = run["config"].copy_and_resolve_references()
  config.label_type = "multi_class"
  workdir_files.write_config(workdir, config)
  eval_vocabulary = ["tonal", "noisy", "other"]
  eval_label_map = [0, 0, 0, 2, 1, 2]
  store.write_json(workdir / predict.LABELS_FILE, {
      "vocabulary": run["vocabulary"], "label_type": "multi_class",
      "eval_vocabulary": eval_vocabulary, "eval_label_map": eval_label_map})
  sc = predict.Predictor.from_workdir(workdir)
  results = sc.predict_files([audio_dir / "a_int16_mono_16k.wav", audio_dir / "g_corrupt.wav"])
  scores = np.array(list(results[0]["scores"].values()))
  assert scores.sum() == pytest.approx(1.0, abs=1e-5)
  best = int(np.argmax(scores))
  assert results[0]["eval_label"] == eval_vocabulary[eval_label_map[best]]
  assert results[1]["error"] and results[1]["eval_label"] is None
  out = tmp_path / "sc.csv"
  with open(out, "w", newline="") as f:
    predict.write_csv(results, f, sc.labels)
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert rows[0]["eval_label"] == results[0]["eval_label"]


def test_cover_segments_span_long_files(run, predictor):
  cover = predict.Predictor(run["config"], predictor._variables, predictor.labels,
                            num_segments=predict.COVER)
  long = _tone(1.0, RATE, 440, 20)
  segments = cover.segments(long)
  assert segments.shape == (int(np.ceil(RATE / 729)), 729)
  np.testing.assert_array_equal(segments[0], long[:729])
  np.testing.assert_array_equal(segments[-1], long[-729:])
  assert cover.segments(long[:100]).shape == (1, 729)


def test_bad_arrays_and_arguments_raise_clear_errors(predictor):
  with pytest.raises(ValueError, match="1-D or 2-D"):
    predictor.predict_waveform(np.zeros((2, 3, 4), np.float32), RATE)
  with pytest.raises(ValueError, match="NaN"):
    predictor.predict_waveform(np.full(1000, np.nan, np.float32), RATE)
  with pytest.raises(ValueError, match="sample_rate"):
    predictor.predict_waveform(np.zeros(1000, np.float32), 0)
  with pytest.raises(ValueError, match="num_segments"):
    predict.Predictor(predictor.config, predictor._variables, predictor.labels, num_segments=0)
  with pytest.raises(SystemExit):
    predict.build_parser().parse_args(["--workdir=x", "--segments=some", "a.wav"])


def test_config_json_from_before_a_field_existed_still_loads(run, predictor, tmp_path):
  """Fields added to the config later take their defaults when an old workdir is loaded."""
  workdir = tmp_path / "old"
  shutil.copytree(run["workdir"], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["tune_thresholds"], saved["model"]["remat"]
  (workdir / "config.json").write_text(json.dumps(saved))
  old = predict.Predictor.from_workdir(workdir)
  assert old.config.tune_thresholds is False and old.config.model.remat is False
  wave = _tone(0.7, RATE, 880, 30)
  expected = predictor.predict_waveform(wave, RATE)
  np.testing.assert_allclose(old.predict_waveform(wave, RATE), expected, atol=1e-6)


def test_rms_normalisation_of_the_run_makes_predictions_level_invariant(run, predictor, tmp_path):
  """config.normalize_rms is read from the workdir, so predict scales inputs as training did."""
  workdir = tmp_path / "rms"
  shutil.copytree(run["workdir"], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["normalize_rms"] = 0.1
  (workdir / "config.json").write_text(json.dumps(saved))
  normalised = predict.Predictor.from_workdir(workdir)
  tone = _tone(0.7, RATE, 880, 30)
  wave = 0.05 * tone / np.abs(tone).max()
  quiet, loud = normalised.predict_waveform(wave, RATE), normalised.predict_waveform(8 * wave, RATE)
  np.testing.assert_allclose(quiet, loud, atol=1e-5)
  assert not np.allclose(predictor.predict_waveform(wave, RATE),
                         predictor.predict_waveform(8 * wave, RATE), atol=1e-5)


def test_streamed_segments_equal_whole_file_decoding(predictor, tmp_path):
  """Issue 10 item 11: only the scored frames are read, with the whole-file result."""
  from samplecnn_jax import audio, input_pipeline
  path = tmp_path / "long_stereo_44k.wav"
  sf.write(path, _tone(9.0, 44100, 700, 11, channels=2), 44100, subtype="PCM_16")
  for count in (3, None):
    streamed, seconds = audio.read_segments(path, RATE, predictor.input_size, count)
    whole = audio.load_audio(path, RATE)
    k = count or -(-len(whole) // predictor.input_size)
    expected = input_pipeline.segment_clip(whole, predictor.input_size, k)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    assert seconds == pytest.approx(9.0)


def test_non_finite_scores_are_a_failed_file_and_json_stays_strict(run, audio_dir, tmp_path):
  """Issue 10 item 10: NaN weights give an error record, never a NaN score."""
  variables = jax.tree.map(lambda x: np.full(np.shape(x), np.nan, np.float32),
                           {"params": run["state"].params, "batch_stats": run["state"].batch_stats})
  labels = predict.load_labels(run["workdir"], run["config"])
  nan_predictor = predict.Predictor(run["config"], variables, labels)
  [record] = nan_predictor.predict_files([audio_dir / "a_int16_mono_16k.wav"])
  assert record["error"].startswith("invalid: the model gave non-finite scores")
  assert record["scores"] == {} and record["top_k"] == []
  with open(tmp_path / "out.json", "w") as out:
    predict.write_json([record], out, {})
  json.loads((tmp_path / "out.json").read_text(), parse_constant=pytest.fail)
  with pytest.raises(ValueError):
    predict.write_json([{"score": float("nan")}], open(tmp_path / "bad.json", "w"), {})


def test_damaged_checkpoint_exits_2_with_a_message(run, audio_dir, tmp_path, capsys):
  damaged = tmp_path / "damaged"
  shutil.copytree(run["workdir"], damaged)
  for f in (damaged / "best").rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  assert predict.main([f"--workdir={damaged}", str(audio_dir / "a_int16_mono_16k.wav")]) == 2
  err = capsys.readouterr().err
  assert "predict: error:" in err and "Traceback" not in err


def test_embeddings_are_the_mean_of_what_the_head_reads(run, predictor, audio_dir, tmp_path):
  files = [audio_dir / "a_int16_mono_16k.wav", audio_dir / "g_corrupt.wav",
           audio_dir / "nested" / "d_long_22k.flac"]
  embeddings, paths, failures = predictor.embed(files)
  assert paths == [str(files[0]), str(files[2])] and failures[0]["path"] == str(files[1])
  # rese2_multi: the head reads the concatenated max pools of the last 3 blocks.
  model = models.create_model(run["config"].model, run["config"].num_classes)
  segments, _ = predictor.load_segments(files[2])
  _, state = model.apply(jax.device_get(predictor._variables), segments, train=False,
                         mutable=["intermediates"])
  expected = np.asarray(state["intermediates"][models.EMBEDDING][0]).mean(axis=0)
  assert embeddings.shape == (2, expected.shape[-1]) and embeddings.dtype == np.float32
  np.testing.assert_allclose(embeddings[1], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(embeddings[0], embeddings[1])
  out = tmp_path / "emb.npz"
  argv = [f"--workdir={run['workdir']}", str(files[0]), str(files[2]), "--no_progress",
          f"--embeddings={out}", f"--output={tmp_path / 'scores.json'}"]
  assert predict.main(argv) == 0
  saved = np.load(out)
  np.testing.assert_allclose(saved["embeddings"], embeddings, rtol=1e-6)
  assert list(saved["paths"]) == paths


def test_timeline_streams_segments_at_the_hop_and_writes_csv_and_png(run, predictor, tmp_path):
  seconds, rate = 3.0, 22050
  wav = tmp_path / "long.wav"
  sf.write(wav, _tone(seconds, rate, 700, 9, channels=2), rate)
  hop = 0.25
  timeline = predictor.timeline(wav, hop, chunk_segments=3)  # Several chunks.
  expected_count = int((seconds * RATE - predictor.input_size) // (hop * RATE)) + 1
  assert timeline["scores"].shape == (expected_count, predictor.num_classes)
  np.testing.assert_allclose(np.diff(timeline["start"]), hop)
  # Each row is the score of exactly that window, as if decoded whole.
  whole = audio.load_audio(wav, RATE)
  k = expected_count - 1
  start = int(round(timeline["start"][k] * RATE))
  direct = predictor.predict_batch([whole[start : start + predictor.input_size]], RATE)[0]
  np.testing.assert_allclose(timeline["scores"][k], direct, rtol=1e-3, atol=1e-4)
  out = tmp_path / "timelines"
  argv = [f"--workdir={run['workdir']}", str(wav), "--no_progress", f"--timeline={out}",
          f"--hop_seconds={hop}", f"--output={tmp_path / 'scores.json'}"]
  assert predict.main(argv) == 0
  rows = (out / "long.wav.timeline.csv").read_text().splitlines()
  assert rows[0].split(",") == ["start_s", "end_s", *run["vocabulary"]]
  assert len(rows) == expected_count + 1
  assert (out / "long.wav.timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_non_utf8_file_names_round_trip_through_json_and_csv(run, tmp_path, capsys):
  """Issue 10 item 7: `--output=x.csv` crashed after the header and such a file was
  'corrupt'; now it is scored, and JSON and CSV give its bytes back via os.fsencode."""
  folder = os.fsencode(tmp_path / "names")
  os.mkdir(folder)
  good, bad = os.path.join(folder, b"caf\xe9.wav"), os.path.join(folder, b"\xff\xfe.wav")
  try:
    sf.write(good, _tone(0.5, RATE, 440, 40), RATE, subtype="PCM_16")
  except (OSError, sf.LibsndfileError) as e:
    pytest.skip(f"this file system refuses non-UTF-8 names: {e}")
  with open(bad, "wb") as f:
    f.write(b"RIFF" + np.random.default_rng(1).bytes(400))
  argv = [f"--workdir={run['workdir']}", os.fsdecode(folder), "--no_progress"]
  out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
  assert predict.main([*argv, f"--output={out_csv}"]) == 0
  with open(out_csv, newline="", encoding="utf-8", errors="surrogateescape") as f:
    rows = {os.fsencode(row["file"]): row for row in csv.DictReader(f)}
  assert set(rows) == {good, bad}
  assert rows[good]["error"] == "" and float(rows[good][run["vocabulary"][0]]) > 0
  assert rows[bad]["error"]
  assert predict.main([*argv, f"--output={out_json}"]) == 0
  out_json.read_bytes().decode("ascii")  # ASCII JSON: \udcXX escapes.
  records = {os.fsencode(r["file"]): r for r in json.loads(out_json.read_text())["files"]}
  assert set(records) == {good, bad} and records[good]["error"] is None
  for name in rows:
    assert float(rows[name][run["vocabulary"][0]] or "nan") == pytest.approx(
        records[name]["scores"].get(run["vocabulary"][0], float("nan")), abs=1e-6, nan_ok=True)
  capsys.readouterr()
  assert predict.main(argv) == 0  # The table shows the bytes as \xNN.
  assert "caf\\xe9.wav" in capsys.readouterr().out


def _rename_opt_state_arrays(workdir) -> None:
  """Makes the best checkpoint's optimizer state point at arrays that are not stored (what a
  damaged or removed opt_state, or one of another optimizer, looks like to a full restore)."""
  [path] = (workdir / "best").glob("*/state/_METADATA")
  metadata = json.loads(path.read_text())
  tree = {}
  for key, value in metadata["tree_metadata"].items():
    if key.startswith("('opt_state'"):
      keys = value["key_metadata"]
      keys = [keys[0], {"key": "lost", "key_type": keys[0]["key_type"]}, *keys[1:]]
      value = {**value, "key_metadata": keys}
      key = str(tuple(k["key"] for k in keys))
    tree[key] = value
  path.write_text(json.dumps({**metadata, "tree_metadata": tree}))


def test_predict_reads_only_params_and_batch_stats(run, predictor, audio_dir, tmp_path):
  """Issue 10 item 10: a checkpoint whose opt_state is damaged, or of another structure,
  still predicts (Orbax partial restore of params and batch_stats only)."""
  wave = _tone(0.7, RATE, 880, 31)
  expected = predictor.predict_waveform(wave, RATE)
  damaged = tmp_path / "damaged_opt"
  shutil.copytree(run["workdir"], damaged)
  _rename_opt_state_arrays(damaged)
  np.testing.assert_allclose(
      predict.Predictor.from_workdir(damaged).predict_waveform(wave, RATE), expected, atol=1e-6)
  assert predict.main([f"--workdir={damaged}", str(audio_dir / "a_int16_mono_16k.wav"),
                       f"--output={tmp_path / 'out.json'}"]) == 0

  other = tmp_path / "other_optimizer"
  shutil.copytree(run["workdir"], other, ignore=shutil.ignore_patterns("best"))
  state = run["state"].replace(opt_state={"something": np.zeros((3, 2), np.float32)})
  ckpt = checkpointing.Checkpointer(other)
  ckpt.save_best(state, {"best_value": 0.5, "best_step": 0})
  ckpt.close()
  np.testing.assert_allclose(
      predict.Predictor.from_workdir(other).predict_waveform(wave, RATE), expected, atol=1e-6)

  # No config.json and a config with another head (fine-tuning): the model built from the
  # config does not name the checkpoint's arrays, so the whole state is read as saved.
  bare = tmp_path / "no_config"
  shutil.copytree(run["workdir"] / "best", bare / "best")
  head = run["config"].copy_and_resolve_references()
  head.num_classes = 3
  variables = checkpointing.load_variables(bare, head, check_config=False)
  np.testing.assert_array_equal(variables["params"]["logits"]["kernel"],
                                run["state"].params["logits"]["kernel"])


def test_broken_symlinks_are_failed_files_with_a_reason(run, predictor, tmp_path, capsys):
  """Issue 10 item 10: a dangling link in a folder was silently dropped."""
  folder = tmp_path / "links"
  folder.mkdir()
  sf.write(folder / "real.wav", _tone(0.5, RATE, 440, 41), RATE)
  (folder / "gone.wav").symlink_to(tmp_path / "moved.wav")
  files, _ = predict.find_audio_files([folder])
  assert [f.name for f in files] == ["gone.wav", "real.wav"]
  results = _by_name(predictor.predict_files(files))
  assert results["gone.wav"]["error"].startswith("missing: broken symbolic link")
  assert "moved.wav" in results["gone.wav"]["error"] and results["real.wav"]["error"] is None
  assert predict.main([f"--workdir={run['workdir']}", str(folder), "--no_progress"]) == 0
  out = capsys.readouterr()
  assert "gone.wav  ERROR missing: broken symbolic link" in out.out and "1 failed" in out.err


def test_a_stream_that_fits_one_batch_runs_a_small_forward_pass():
  """3 one-segment files run as 4 rows, not 64; longer streams keep the one full shape."""
  shapes = []

  def score(batch):
    shapes.append(batch.shape)
    return np.full((len(batch), 2), 0.5, np.float32) + batch[:, :1]

  items = [(i, np.full((1, 5), i, np.float32)) for i in range(3)]
  out = list(predict.score_segment_stream(items, score, batch_size=64, input_size=5))
  assert shapes == [(4, 5)]
  assert [k for k, _ in out] == [0, 1, 2] and out[2][1][0] == pytest.approx(2.5)
  shapes.clear()
  items = [(i, np.zeros((10, 5), np.float32)) for i in range(7)]  # 70 segments.
  assert len(list(predict.score_segment_stream(items, score, batch_size=64, input_size=5))) == 7
  assert shapes == [(64, 5), (64, 5)]
