"""Tests for samplecnn_jax.export (and the graph of samplecnn_jax.onnx_graph): every variant's
ONNX graph equals the JAX model, the metadata round-trips, int8 and StableHLO exports load and
score, and the command's mistakes exit 2 in one line.

`predict --model` on an export (the same records as `--workdir`) is tested in test_predict.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest
import soundfile as sf
from conftest import load_config, one_error_line
from trained_run import tone

from samplecnn_jax import (
  audio,
  export,
  exported,
  models,
  onnx_graph,
  scoring,
  segments,
  store,
  workdir_files,
)
from samplecnn_jax.testing import random_variables
from samplecnn_jax.workdir_files import LabelInfo

PROG = "python -m samplecnn_jax.export"
VARIANTS = ("samplecnn", "se", "res1", "res2", "rese1", "rese2", "se_multi", "rese2_multi")


def main(*argv) -> int:
  return export.main([PROG, *map(str, argv)])


def _embedding(config, variables, waveforms):
  model = models.create_model(config.model, config.num_classes)
  inputs = segments.InputScaling.from_config(config)(np.array(waveforms))
  _, state = model.apply(variables, inputs, train=False, mutable=["intermediates"])
  return np.asarray(state["intermediates"][models.EMBEDDING][0])


@pytest.mark.parametrize("variant", [*VARIANTS, "rese2_multi+mean_max", "se+mean_max"])
def test_every_variant_exports_and_equals_jax(variant):
  """Scores and embeddings of the graph equal the JAX model's, with RMS normalisation and
  standardisation inside the graph, for a dynamic batch (and the mean_max global pool)."""
  variant, _, pool = variant.partition("+")
  config = load_config("test", variant)
  config.model.global_pool = pool or "max"
  config.normalize_rms, config.standardize = 0.1, True
  config.audio_mean, config.audio_std = 0.01, 0.3
  if variant == "se":  # Softmax, and the front conv's "same" padding on a length not 3^k.
    config.label_type, config.model.front_padding, config.input_size = (
        "multi_class", "same", 733)
  variables = random_variables(config)
  labels = LabelInfo.numbered(config.num_classes, config.label_type)
  model = export.onnx_model(config, variables, labels)
  network = exported.OnnxNetwork(model.SerializeToString())
  for count in (1, 5):
    waveforms = export.check_waveforms(config, count, seed=count)
    out = network(waveforms)
    reference = export.jax_scores(config, variables, waveforms)
    assert out[scoring.PROBABILITIES].shape == (count, config.num_classes)
    np.testing.assert_allclose(out[scoring.PROBABILITIES], reference, atol=1e-5)
    np.testing.assert_allclose(out[scoring.EMBEDDING],
                               _embedding(config, variables, waveforms), rtol=1e-4, atol=1e-4)
  ops = {node.op_type for node in model.graph.node}
  assert "BatchNormalization" not in ops  # Folded into the convolutions and Gemms.
  assert {"Sqrt", "Sub"} <= ops  # The input scaling is inside.
  assert ("Softmax" if config.label_type == "multi_class" else "Sigmoid") in ops


def test_metadata_round_trips_and_foreign_files_are_refused(tmp_path):
  config = load_config("test", "samplecnn")
  labels = LabelInfo(("a", "b", "c", "d", "e", "f"), "multi_label")
  info = export.export_info(config, labels, "run (best)")
  props = info.to_metadata()
  assert all(isinstance(v, str) for v in props.values())
  assert json.loads(props["labels"])["vocabulary"] == list(labels.vocabulary)
  assert f"{config.eval_segments} windows of {config.input_size} samples" in props["segment_rule"]
  back = exported.ExportInfo.from_metadata(props)
  assert back == info
  with pytest.raises(ValueError, match="not a samplecnn_jax export"):
    exported.ExportInfo.from_metadata({"format": "other"}, "x.onnx")


def test_command_writes_a_float_onnx_model_with_its_metadata(run, tmp_path, capsys):
  out = tmp_path / "model.onnx"
  assert main(f"--workdir={run['workdir']}", f"--out={out}") == 0
  assert "max |difference|" in capsys.readouterr().err
  model = onnx.load(str(out))
  props = {p.key: p.value for p in model.metadata_props}
  config = run["config"]
  assert props["sample_rate"] == str(config.sample_rate)
  assert props["input_size"] == str(config.input_size)
  assert props["label_type"] == config.label_type
  assert json.loads(props["labels"])["vocabulary"] == run["vocabulary"]
  assert float(props["threshold"]) == config.f_score_threshold
  assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == onnx_graph.BATCH


def _float_convs(model) -> set[str]:
  """The front/block convs of an int8 model whose weights are float32 (no DequantizeLinear)."""
  dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
  convs = [n for n in model.graph.node
           if n.op_type == "Conv" and n.name.startswith(("front_", "block"))]
  assert convs
  return {n.name.split("_")[0] for n in convs if n.input[1] not in dequantized}


def test_int8_round_trip(run, tmp_path):
  """The int8 model (calibrated on the run's train split) loads through the predictor, says it
  is int8, stores int8 weights, and scores clips like the calibration's near the float model."""
  float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
  assert main(f"--workdir={run['workdir']}", f"--out={float_path}") == 0
  assert main(f"--workdir={run['workdir']}", f"--out={int8_path}", "--quantize=int8") == 0
  model = onnx.load(str(int8_path))
  assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
  # The front end and the first export.FLOAT_BLOCKS blocks read float32 weights, later convs
  # int8 ones (through DequantizeLinear).
  assert _float_convs(model) == {"front", *(f"block{i + 1}" for i in range(export.FLOAT_BLOCKS))}
  faster = tmp_path / "q0.onnx"
  assert main(f"--workdir={run['workdir']}", f"--out={faster}", "--quantize=int8",
              "--int8_float_blocks=0") == 0
  assert _float_convs(onnx.load(str(faster))) == {"front"}
  assert main(f"--workdir={run['workdir']}", f"--out={faster}", "--int8_float_blocks=0") == 2
  predictors = [exported.OnnxPredictor.from_file(p) for p in (float_path, int8_path)]
  assert [p.info.quantization for p in predictors] == ["float32", "int8"]
  clips = store.Store.open(run["data_dir"]).clips("test")  # Like the calibration clips.
  waveforms = [audio.to_float32(clips[i]["audio"]) for i in range(len(clips))]
  float_scores, int8_scores = (p.predict_batch(waveforms, 16000) for p in predictors)
  assert int8_scores.shape == float_scores.shape
  # An untrained 4-channel model is int8's worst case; on the trained demo run the largest
  # difference was 0.08 and the F-score unchanged (docs/deploy.md).
  assert np.abs(int8_scores - float_scores).max() < 0.15



def test_int8_of_a_run_trained_at_one_rms_quantises_from_block_1(run, tmp_path):
  """A run with normalize_rms sees every window at one level: int8 keeps only the front end
  (the input scaling and the front conv) in float32 by default."""
  workdir = tmp_path / "rms"
  shutil.copytree(run["workdir"] / "best", workdir / "best")
  config = run["config"].copy_and_resolve_references()
  config.normalize_rms = 0.1
  workdir_files.write_config(workdir, config)
  shutil.copy(run["workdir"] / "labels.json", workdir / "labels.json")
  out = tmp_path / "q.onnx"
  assert main(f"--workdir={workdir}", f"--out={out}", "--quantize=int8") == 0
  model = onnx.load(str(out))
  assert _float_convs(model) == {"front"}
  assert any(n.op_type == "ReduceMean" for n in model.graph.node)  # The RMS is inside.
  assert main(f"--workdir={workdir}", f"--out={out}", "--quantize=int8",
              "--int8_float_blocks=1") == 0
  assert _float_convs(onnx.load(str(out))) == {"front", "block1"}

def test_int8_calibrates_on_files_when_the_store_is_not_here(run, tmp_path, capsys):
  moved = tmp_path / "moved"
  shutil.copytree(run["workdir"], moved)
  config = run["config"].copy_and_resolve_references()
  config.data_dir = str(tmp_path / "no_store")
  workdir_files.write_config(moved, config)
  out = tmp_path / "q.onnx"
  assert main(f"--workdir={moved}", f"--out={out}", "--quantize=int8") == 2
  assert "--calibration=FILES_OR_FOLDER" in capsys.readouterr().err and not out.exists()
  clips = tmp_path / "clips"
  clips.mkdir()
  for seed in range(3):
    sf.write(clips / f"{seed}.wav", tone(1.0, 16000, 300 + 200 * seed, seed), 16000)
  assert main(f"--workdir={moved}", f"--out={out}", "--quantize=int8",
              f"--calibration={clips}") == 0
  assert exported.OnnxPredictor.from_file(out).info.quantization == "int8"


def test_stablehlo_export_deserializes_with_jax_alone(run, tmp_path):
  out = tmp_path / "model.jax"
  assert main(f"--workdir={run['workdir']}", f"--out={out}") == 0
  artifact = jax.export.deserialize(bytearray(out.read_bytes()))
  config, variables, _, _ = export.load_run(run["workdir"])
  for count in (1, 3):  # The batch dimension is symbolic.
    waveforms = export.check_waveforms(config, count, seed=count)
    np.testing.assert_allclose(np.asarray(artifact.call(waveforms)),
                               export.jax_scores(config, variables, waveforms), atol=1e-6)
  facts = json.loads((tmp_path / "model.jax.json").read_text())
  assert facts["input_size"] == str(config.input_size)


@pytest.mark.slow
def test_stablehlo_export_runs_in_a_process_without_the_project(run, tmp_path):
  out = tmp_path / "model.jax"
  assert main(f"--workdir={run['workdir']}", f"--out={out}") == 0
  code = ("import sys, jax, numpy as np\n"
          f"artifact = jax.export.deserialize(bytearray(open({str(out)!r}, 'rb').read()))\n"
          f"scores = artifact.call(np.zeros((2, {run['config'].input_size}), np.float32))\n"
          "print(scores.shape, any(m.startswith('samplecnn_jax') for m in sys.modules))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[-2] == f"(2, {run['config'].num_classes}) False"


@pytest.mark.parametrize("argv, expected", [
    (["--out=model.txt"], "name a .onnx (ONNX) or .jax (StableHLO) file"),
    (["--out=model.jax", "--quantize=int8"], "applies to ONNX"),
    (["--out=model.onnx", "--quantize=int4"], "--quantize"),
    (["--out=model.onnx", "--calibration=clips"], "add --quantize=int8"),
])
def test_usage_errors_exit_2_with_one_line(run, argv, expected, capsys):
  assert main(f"--workdir={run['workdir']}", *argv) == 2
  assert expected in one_error_line(capsys.readouterr().err, PROG)


def test_a_missing_workdir_exits_2(tmp_path, capsys):
  assert main(f"--workdir={tmp_path / 'nope'}", f"--out={tmp_path / 'm.onnx'}") == 2
  assert "does not exist" in capsys.readouterr().err
  assert not (tmp_path / "m.onnx").exists()
