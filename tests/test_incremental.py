"""Tests for samplecnn_jax.incremental: windows that reuse the early blocks' outputs score
exactly as whole windows (float and int8 exports of a SampleCNN), the hop rule, and the
models it must refuse (Squeeze-Excitation, input RMS normalisation, a hop off the frames)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from samplecnn_jax import export, exported, incremental, onnx_graph, testing  # noqa: E402
from samplecnn_jax.workdir_files import LabelInfo  # noqa: E402

HOP = 270  # Samples: cut at block 1 (frames of 9 samples; 30 frames a hop) of a 729 window.


def _export(variant: str = "samplecnn", **fields) -> tuple[object, bytes]:
  config = testing.load_config("test", variant)
  for name, value in fields.items():
    config[name] = value
  variables = testing.random_variables(config)
  labels = LabelInfo.numbered(config.num_classes, config.label_type)
  return config, export.onnx_model(config, variables, labels).SerializeToString()


def _full(model: bytes):
  network = exported.OnnxNetwork(model)
  return lambda batch: network(batch)["probabilities"]


def _noise(samples: int, seed: int = 1) -> np.ndarray:
  return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


@pytest.fixture(scope="module")
def samplecnn():
  return _export()


def test_the_cut_is_the_deepest_block_whose_frame_fits_16_times_in_the_hop():
  assert incremental.cut_for_hop(1600) == 3  # 81 * 16 <= 1600 < 243 * 16.
  assert incremental.aligned_hop(1600) == 1620  # 20 frames of 81 samples (101.25 ms).
  assert incremental.cut_for_hop(143) == 0 and incremental.aligned_hop(143) == 143
  for hop in range(144, 20000, 37):
    aligned = incremental.aligned_hop(hop)
    assert aligned % incremental.frame(incremental.cut_for_hop(hop)) == 0
    assert abs(aligned - hop) <= 0.032 * hop


@pytest.mark.parametrize("hop, block, input_size", [(HOP, 1, 729), (486, 2, 729), (HOP, 1, 800)])
def test_reused_windows_score_as_whole_windows(samplecnn, hop, block, input_size):
  # 800 samples are not a whole number of frames: the samples past the last frame, which the
  # pools drop, must be dropped from the reused pieces the same way.
  config, model = samplecnn if input_size == 729 else _export(input_size=input_size)
  assert config.model.input_size == input_size
  windows, note = incremental.for_network(exported.OnnxNetwork(model), config.input_size, hop, check=_full(model))
  assert windows is not None and note.startswith("reusing block") and f"{block} between" in note
  audio = _noise(config.input_size + 12 * hop)
  starts = [i * hop for i in range(8)] + [11 * hop, 12 * hop]  # A jump: scored whole.
  batch = np.stack([audio[s : s + config.input_size] for s in starts])
  mine = np.stack([windows(window, start) for window, start in zip(batch, starts, strict=True)])
  np.testing.assert_allclose(mine, _full(model)(batch), atol=1e-5)
  # The kept block output is the one the whole window gives, end frames included.
  np.testing.assert_allclose(windows.features, windows.split.front(batch[-1]), atol=1e-5)


def test_the_check_refuses_a_cut_whose_scores_differ(samplecnn, monkeypatch):
  config, model = samplecnn
  # Pieces (anything shorter than a window) that come out 1% off, as a wrong cut would.
  front = incremental.OnnxSplit.front
  monkeypatch.setattr(incremental.OnnxSplit, "front", lambda self, samples: front(
      self, samples) * (1.0 if len(samples) == config.input_size else 1.01))
  windows, note = incremental.for_network(exported.OnnxNetwork(model), config.input_size, HOP, check=_full(model))
  assert windows is None and "changed the scores" in note


def test_int8_exports_reuse_blocks_too(samplecnn):
  config, model = samplecnn
  int8 = export.quantize_int8(model, np.stack([_noise(config.input_size, s) for s in range(8)]),
                              float_blocks=0)
  windows, _ = incremental.for_network(exported.OnnxNetwork(int8), config.input_size, HOP, check=_full(int8))
  assert windows is not None


@pytest.mark.parametrize("variant, fields, reason", [
    ("rese2_multi", {}, "ReduceMean"),  # The Squeeze-Excitation gate averages the window.
    ("res2", {"normalize_rms": 0.1}, "ReduceMean"),  # So does the input RMS normalisation.
])
def test_models_whose_early_blocks_read_the_whole_window_are_scored_whole(variant, fields,
                                                                          reason):
  config, model = _export(variant, **fields)
  windows, note = incremental.for_network(exported.OnnxNetwork(model), config.input_size, HOP)
  assert windows is None and reason in note and "whole" in note
  assert incremental.hop_for(exported.OnnxNetwork(model), 1600, 16000) == 1600  # No cut: the hop is left as asked.


def test_residual_blocks_without_gates_are_reused_exactly():
  config, model = _export("res2")
  windows, _ = incremental.for_network(exported.OnnxNetwork(model), config.input_size, HOP, check=_full(model))
  assert windows is not None


def test_a_hop_off_the_frames_is_scored_whole_and_hop_for_aligns_it(samplecnn):
  config, model = samplecnn
  windows, note = incremental.for_network(exported.OnnxNetwork(model), config.input_size, 1600)
  assert windows is None and "not a multiple of 9" in note
  assert incremental.hop_for(exported.OnnxNetwork(model), 1600, 16000) == 1620
  assert incremental.hop_for(exported.OnnxNetwork(model), 1600, config.input_size) == 1600  # Windows don't overlap.
  with pytest.raises(ValueError, match="whole number of frames"):
    incremental.IncrementalWindows(None, config.input_size, 100, 9)


def test_block_outputs_are_named_in_the_graph(samplecnn):
  import onnx

  _, model = samplecnn
  names = {out for node in onnx.load_from_string(model).graph.node for out in node.output}
  assert {onnx_graph.block_output(i) for i in range(1, 6)} <= names


def test_jax_networks_reuse_blocks_exactly_and_refuse_what_reads_the_whole_window():
  from samplecnn_jax import inference

  def network(variant: str, **fields):
    config = testing.load_config("test", variant)
    for name, value in fields.items():
      config[name] = value
    return config, inference.Network(config, testing.random_variables(config))

  config, jax_network = network("samplecnn")
  full = lambda batch: jax_network(batch)["probabilities"]
  windows, note = incremental.for_network(jax_network, config.input_size, 486, check=full)
  assert windows is not None and "blocks 1-2" in note
  audio = _noise(config.input_size + 5 * 486)
  batch = np.stack([audio[i * 486 : i * 486 + config.input_size] for i in range(5)])
  mine = np.stack([windows(window, i * 486) for i, window in enumerate(batch)])
  np.testing.assert_allclose(mine, full(batch), atol=1e-5)
  assert network("res2_multi")[1].cut_for(486) == (2, "")  # Multi reads blocks 3-5: fine.
  assert jax_network.cut_for(3888)[0] == 4  # 3888 = 16 frames of block 4 (243 samples).
  assert network("res2_multi")[1].cut_for(3888)[0] == 3  # Not 4: the head reads block 3.
  assert "Squeeze-Excitation" in network("rese2_multi")[1].cut_for(486)[1]
  assert "RMS normalisation" in network("samplecnn", normalize_rms=0.1)[1].cut_for(486)[1]
