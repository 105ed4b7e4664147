"""Tests for samplecnn_jax.predict: finding files, the writers (JSON, CSV, table, timelines,
embeddings) and the command, its exit codes and one-line errors, on a real checkpointed
workdir and real audio files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import onnx
import pytest
import soundfile as sf
from conftest import REPO, one_error_line
from onnx import TensorProto, helper
from trained_run import RATE, by_name, make_eval_mapped_run, tone

from samplecnn_jax import checkpointing, export, inference, predict, workdir_files

PROG = "python -m samplecnn_jax.predict"


def main(*argv) -> int:
  """`predict.main` in this process, as `python -m samplecnn_jax.predict ARGV...`."""
  return predict.main([PROG, *map(str, argv)])


def test_cli_writes_json_csv_and_table(run, audio_dir, tmp_path, capsys):
  out_json = tmp_path / "out.json"
  argv = [f"--workdir={run['workdir']}", audio_dir, "--top_k=2", "--threshold=0.4",
          "--no_progress"]
  assert main(*argv, f"--output={out_json}") == 1  # Two broken files.
  data = json.loads(out_json.read_text())
  assert data["labels"] == run["vocabulary"] and data["threshold"] == 0.4
  assert data["segments"] == 2 and data["sample_rate"] == RATE
  files = by_name(data["files"])
  assert files["g_corrupt.wav"]["error"] and files["a_int16_mono_16k.wav"]["error"] is None
  assert all(len(r["top_k"]) == (0 if r["error"] else 2) for r in data["files"])
  assert set(files["b_float_stereo_44k.wav"]) >= {
      "file", "error", "duration_s", "num_segments", "scores", "top_k", "above_threshold"}
  assert "2 failed" in capsys.readouterr().err

  out_csv = tmp_path / "out.csv"
  assert main(*argv, f"--output={out_csv}") == 1
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
  assert main(*argv, audio_dir / "a_int16_mono_16k.wav") == 1
  lines = capsys.readouterr().out.strip().splitlines()
  assert any("ERROR corrupt" in line or "ERROR unsupported" in line for line in lines)
  table = [line for line in lines if "a_int16_mono_16k.wav" in line]
  assert len(table) == 2 and files["a_int16_mono_16k.wav"]["top_k"][0]["label"] in table[0]


def test_progress_bar_from_ten_files(run, audio_dir, tmp_path, capsys):
  count = len(predict.find_audio_files([audio_dir])[0])
  assert main(f"--workdir={run['workdir']}", audio_dir, audio_dir,
              f"--output={tmp_path / 'out.json'}") == 1
  assert f"{2 * count}/{2 * count}" in capsys.readouterr().err  # The progress bar.


def test_exit_codes_0_all_scored_1_some_failed(run, audio_dir, tmp_path, capsys):
  good = audio_dir / "a_int16_mono_16k.wav"
  assert main(f"--workdir={run['workdir']}", good, "--no_progress") == 0
  assert "1 files scored, 0 failed" in capsys.readouterr().err
  # Nothing readable: exit 1, the failures still printed.
  assert main(f"--workdir={run['workdir']}", audio_dir / "g_corrupt.wav") == 1
  assert "ERROR" in capsys.readouterr().out
  assert main(f"--workdir={run['workdir']}", good, audio_dir / "g_corrupt.wav") == 1
  assert "1 files scored, 1 failed" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    ([], "no FILE_OR_FOLDER given"),
    (["--top_k=-1", "a.wav"], "--top_k"),
    (["--threads=0", "a.wav"], "--threads"),
    (["--segments=some", "a.wav"], "--segments=some: expected an integer >= 1 or 'cover'"),
    (["--format=xml", "a.wav"], "--format"),
    (["--top-k=2", "a.wav"], "top-k"),  # The old dashed spelling is gone.
    (["--output=x.txt", "a.wav"], ".json or .csv"),
    (["--hop_seconds=0", "--timeline=t", "a.wav"], "--hop_seconds=0.0: the timeline hop"),
])
def test_usage_errors_exit_2_with_one_line(run, argv, expected, capsys):
  assert main(f"--workdir={run['workdir']}", *argv) == 2
  assert expected in one_error_line(capsys.readouterr().err, PROG)


def test_configuration_errors_exit_2_with_one_line(run, audio_dir, tmp_path, capsys):
  assert main(audio_dir) == 2  # No --workdir.
  assert "workdir" in one_error_line(capsys.readouterr().err, PROG)
  assert main(f"--workdir={tmp_path / 'nope'}", audio_dir) == 2
  assert "does not exist" in one_error_line(capsys.readouterr().err, PROG)
  # A workdir without checkpoints: exit 2 with the fix.
  bare = tmp_path / "bare"
  workdir_files.write_config(bare, run["config"])
  assert main(f"--workdir={bare}", audio_dir) == 2
  assert "No best checkpoint" in one_error_line(capsys.readouterr().err, PROG)
  empty = tmp_path / "empty_folder"
  empty.mkdir()
  assert main(f"--workdir={run['workdir']}", empty) == 2
  err = capsys.readouterr().err
  assert "no audio files" in err and "no audio files to score" in err.splitlines()[-1]


@pytest.mark.slow
def test_module_entry_point_exits_2_on_a_missing_workdir(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "samplecnn_jax.predict", f"--workdir={tmp_path / 'nope'}", "x.wav"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_csv_has_the_eval_label_of_multi_class_runs(run, audio_dir, tmp_path):
  sc = inference.Predictor.from_workdir(make_eval_mapped_run(run, tmp_path / "sc"))
  results = sc.predict_files([audio_dir / "a_int16_mono_16k.wav", audio_dir / "g_corrupt.wav"])
  out = tmp_path / "sc.csv"
  with open(out, "w", newline="") as f:
    predict.write_csv(results, f, sc.labels)
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert rows[0]["eval_label"] == results[0]["eval_label"]


def test_json_stays_strict(run, audio_dir, tmp_path):
  """Issue 10 item 10: the record of a file with NaN scores is strict JSON; a NaN is refused."""
  variables = jax.tree.map(lambda x: np.full(np.shape(x), np.nan, np.float32),
                           {"params": run["state"].params, "batch_stats": run["state"].batch_stats})
  labels = inference.load_labels(run["workdir"], run["config"])
  nan_predictor = inference.Predictor(run["config"], variables, labels)
  [record] = nan_predictor.predict_files([audio_dir / "a_int16_mono_16k.wav"])
  with open(tmp_path / "out.json", "w") as out:
    predict.write_json([record], out, {})
  json.loads((tmp_path / "out.json").read_text(), parse_constant=pytest.fail)
  with pytest.raises(ValueError):
    predict.write_json([{"score": float("nan")}], open(tmp_path / "bad.json", "w"), {})


def _truncate_files(folder: Path) -> None:
  for f in folder.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])


def test_damaged_checkpoint_exits_2_with_a_message(run, audio_dir, tmp_path, capsys):
  damaged = tmp_path / "damaged"
  shutil.copytree(run["workdir"], damaged)
  _truncate_files(damaged / "best")
  assert main(f"--workdir={damaged}", audio_dir / "a_int16_mono_16k.wav") == 2
  err = capsys.readouterr().err
  assert "predict: error:" in err and "Traceback" not in err
  assert f"{damaged / 'best' / '0'}" in one_error_line(err, PROG), "names the damaged file"


def test_damaged_best_falls_back_to_latest_with_a_note(run, audio_dir, tmp_path, capsys):
  """Issue 22 failure 2: a damaged best scores with the latest checkpoint and says so."""
  damaged = tmp_path / "damaged"
  shutil.copytree(run["workdir"], damaged)
  shutil.copytree(damaged / "best" / "0", damaged / "checkpoints" / "0")  # An intact latest.
  _truncate_files(damaged / "best")
  assert main(f"--workdir={damaged}", audio_dir / "a_int16_mono_16k.wav") == 0
  out, err = capsys.readouterr()
  notes = [line for line in err.splitlines() if line.startswith("predict: note:")]
  assert len(notes) == 1 and "used the latest checkpoint of step 0" in notes[0]
  assert f"{damaged / 'best' / '0'}" in notes[0] and "a_int16_mono_16k.wav" in out


def test_cli_writes_the_embeddings_of_the_engine(run, predictor, audio_dir, tmp_path, capsys):
  files = [audio_dir / "a_int16_mono_16k.wav", audio_dir / "g_corrupt.wav",
           audio_dir / "nested" / "d_long_22k.flac"]
  embeddings, paths, _ = predictor.embed(files)
  out = tmp_path / "emb.npz"
  assert main(f"--workdir={run['workdir']}", files[0], files[2], "--no_progress",
              f"--embeddings={out}", f"--output={tmp_path / 'scores.json'}") == 0
  saved = np.load(out)
  np.testing.assert_allclose(saved["embeddings"], embeddings, rtol=1e-6)
  assert list(saved["paths"]) == paths
  assert main(f"--workdir={run['workdir']}", *files, "--no_progress", f"--embeddings={out}",
              f"--output={tmp_path / 'scores.json'}") == 1
  assert f"no embedding for {files[1]}" in capsys.readouterr().err
  assert list(np.load(out)["paths"]) == paths


def test_cli_writes_timeline_csv_and_png(run, predictor, tmp_path):
  seconds, rate = 3.0, 22050
  wav = tmp_path / "long.wav"
  sf.write(wav, tone(seconds, rate, 700, 9, channels=2), rate)
  hop = 0.25
  expected_count = int((seconds * RATE - predictor.input_size) // (hop * RATE)) + 1
  out = tmp_path / "timelines"
  assert main(f"--workdir={run['workdir']}", wav, "--no_progress", f"--timeline={out}",
              f"--hop_seconds={hop}", f"--output={tmp_path / 'scores.json'}") == 0
  rows = (out / "long.wav.timeline.csv").read_text().splitlines()
  assert rows[0].split(",") == ["start_s", "end_s", *run["vocabulary"]]
  assert len(rows) == expected_count + 1
  assert (out / "long.wav.timeline.png").read_bytes()[:4] == b"\x89PNG"
  timeline = predictor.timeline(wav, hop)
  written = np.array([[float(v) for v in row.split(",")[2:]] for row in rows[1:]])
  np.testing.assert_allclose(written, timeline["scores"], atol=1e-5)


def test_non_utf8_file_names_round_trip_through_json_and_csv(run, tmp_path, capsys):
  """Issue 10 item 7: `--output=x.csv` crashed after the header and such a file was
  'corrupt'; now it is scored, and JSON and CSV give its bytes back via os.fsencode."""
  folder = os.fsencode(tmp_path / "names")
  os.mkdir(folder)
  good, bad = os.path.join(folder, b"caf\xe9.wav"), os.path.join(folder, b"\xff\xfe.wav")
  try:
    sf.write(good, tone(0.5, RATE, 440, 40), RATE, subtype="PCM_16")
  except (OSError, sf.LibsndfileError) as e:
    pytest.skip(f"this file system refuses non-UTF-8 names: {e}")
  with open(bad, "wb") as f:
    f.write(b"RIFF" + np.random.default_rng(1).bytes(400))
  argv = [f"--workdir={run['workdir']}", os.fsdecode(folder), "--no_progress"]
  out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
  assert main(*argv, f"--output={out_csv}") == 1  # The bad one fails.
  with open(out_csv, newline="", encoding="utf-8", errors="surrogateescape") as f:
    rows = {os.fsencode(row["file"]): row for row in csv.DictReader(f)}
  assert set(rows) == {good, bad}
  assert rows[good]["error"] == "" and float(rows[good][run["vocabulary"][0]]) > 0
  assert rows[bad]["error"]
  assert main(*argv, f"--output={out_json}") == 1
  out_json.read_bytes().decode("ascii")  # ASCII JSON: \udcXX escapes.
  records = {os.fsencode(r["file"]): r for r in json.loads(out_json.read_text())["files"]}
  assert set(records) == {good, bad} and records[good]["error"] is None
  for name in rows:
    assert float(rows[name][run["vocabulary"][0]] or "nan") == pytest.approx(
        records[name]["scores"].get(run["vocabulary"][0], float("nan")), abs=1e-6, nan_ok=True)
  capsys.readouterr()
  assert main(*argv) == 1  # The table shows the bytes as \xNN.
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
  wave = tone(0.7, RATE, 880, 31)
  expected = predictor.predict_waveform(wave, RATE)
  damaged = tmp_path / "damaged_opt"
  shutil.copytree(run["workdir"], damaged)
  _rename_opt_state_arrays(damaged)
  np.testing.assert_allclose(
      inference.Predictor.from_workdir(damaged).predict_waveform(wave, RATE), expected,
      atol=1e-6)
  assert main(f"--workdir={damaged}", audio_dir / "a_int16_mono_16k.wav",
              f"--output={tmp_path / 'out.json'}") == 0

  other = tmp_path / "other_optimizer"
  shutil.copytree(run["workdir"], other, ignore=shutil.ignore_patterns("best"))
  state = run["state"].replace(opt_state={"something": np.zeros((3, 2), np.float32)})
  ckpt = checkpointing.Checkpointer(other)
  ckpt.save_best(state, {"best_value": 0.5, "best_step": 0})
  ckpt.close()
  np.testing.assert_allclose(
      inference.Predictor.from_workdir(other).predict_waveform(wave, RATE), expected, atol=1e-6)

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
  sf.write(folder / "real.wav", tone(0.5, RATE, 440, 41), RATE)
  (folder / "gone.wav").symlink_to(tmp_path / "moved.wav")
  files, _ = predict.find_audio_files([folder])
  assert [f.name for f in files] == ["gone.wav", "real.wav"]
  results = by_name(predictor.predict_files(files))
  assert results["gone.wav"]["error"].startswith("missing: broken symbolic link")
  assert "moved.wav" in results["gone.wav"]["error"] and results["real.wav"]["error"] is None
  assert main(f"--workdir={run['workdir']}", folder, "--no_progress") == 1
  out = capsys.readouterr()
  assert "gone.wav  ERROR missing: broken symbolic link" in out.out and "1 failed" in out.err


# --- An exported model: predict --model (issue 24) ----------------------------------------------


@pytest.fixture(scope="module")
def onnx_file(run):
  out = run["root"] / "exported" / "model.onnx"
  assert export.main(["export", f"--workdir={run['workdir']}", f"--out={out}"]) == 0
  return out


def test_model_gives_the_records_of_the_workdir(run, onnx_file, audio_dir, tmp_path):
  """Same files, errors, fields and formats as --workdir; scores within 1e-4; embeddings too."""
  common = [audio_dir, "--no_progress", "--top_k=3"]
  outputs = {}
  for name, flag in (("workdir", f"--workdir={run['workdir']}"), ("model", f"--model={onnx_file}")):
    out = tmp_path / f"{name}.json"
    assert main(flag, *common, f"--output={out}", f"--embeddings={tmp_path / name}.npz") == 1
    outputs[name] = json.loads(out.read_text())
    assert main(flag, *common, f"--output={tmp_path / name}.csv") == 1
  jax_out, onnx_out = outputs["workdir"], outputs["model"]
  assert onnx_out["model"] == str(onnx_file) and onnx_out["quantization"] == "float32"
  for key in ("label_type", "sample_rate", "input_size", "segments", "threshold", "labels"):
    assert onnx_out[key] == jax_out[key], key
  assert len(onnx_out["files"]) == len(jax_out["files"]) > 5
  for ours, theirs in zip(onnx_out["files"], jax_out["files"], strict=True):
    assert set(ours) == set(theirs) and ours["file"] == theirs["file"]
    assert ours["error"] == theirs["error"] and ours["num_segments"] == theirs["num_segments"]
    for label, score in theirs["scores"].items():
      assert abs(ours["scores"][label] - score) <= 1e-4
  with open(tmp_path / "model.csv", newline="") as f, open(tmp_path / "workdir.csv",
                                                             newline="") as g:
    assert next(csv.reader(f)) == next(csv.reader(g))  # The same columns.
  emb = {name: np.load(tmp_path / f"{name}.npz") for name in outputs}
  assert list(emb["model"]["paths"]) == list(emb["workdir"]["paths"])
  np.testing.assert_allclose(emb["model"]["embeddings"], emb["workdir"]["embeddings"],
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("argv, expected", [
    ([], "--workdir=DIR (a training run) or --model=FILE.onnx"),
    (["--workdir=w", "--model=m.onnx"], "not both"),
    (["--model=m.onnx", "--labels=labels.json"], "an exported --model carries its own"),
    (["--model=nope.onnx"], "No model file nope.onnx"),
])
def test_model_usage_errors_exit_2_with_one_line(argv, expected, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert main(*argv, "a.wav") == 2
  assert expected in one_error_line(capsys.readouterr().err, PROG)


def test_a_file_that_is_no_model_exits_2(run, tmp_path, capsys):
  (tmp_path / "bad.onnx").write_bytes(b"not a model")
  assert main(f"--model={tmp_path / 'bad.onnx'}", "a.wav") == 2
  assert "cannot load --model=" in one_error_line(capsys.readouterr().err, PROG)
  foreign = tmp_path / "foreign.onnx"  # A valid ONNX model, not written by export.
  graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
  onnx.save(helper.make_model(graph), str(foreign))
  assert main(f"--model={foreign}", "a.wav") == 2
  assert "not a samplecnn_jax export" in one_error_line(capsys.readouterr().err, PROG)


@pytest.mark.slow
def test_model_scores_files_without_importing_jax_or_flax(onnx_file, audio_dir, tmp_path):
  code = (
      "import json, sys\n"
      "from samplecnn_jax import predict\n"
      f"code = predict.main(['predict', '--model={onnx_file}', '--output={tmp_path}/o.json',\n"
      f"                     '--no_progress', '{audio_dir / 'a_int16_mono_16k.wav'}'])\n"
      "print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in "
      "('jax', 'jaxlib', 'flax'))]))\n"
  )
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  code, modules = json.loads(proc.stdout.strip().splitlines()[-1])
  assert code == 0 and modules == []
  assert json.loads((tmp_path / "o.json").read_text())["files"][0]["scores"]
