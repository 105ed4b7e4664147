"""Tests for samplecnn_jax.visualize: known filters are recovered, ascent ascends, CLI files.

Tiny widths only (configs/test.py: base width 4, 5 blocks, 729 samples); each layer costs
one compile, so the CLI run is shared by the tests that read its files.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, load_config

from samplecnn_jax import models, visualize

SAMPLE_RATE = 16000.0
BIN_HZ = SAMPLE_RATE / 729  # 21.9 Hz: the FFT bin of a 729-sample estimate.


# --- Known filters ------------------------------------------------------------------------

# 3-tap front-conv filters and the peak of |H(f)| of each, worked out by hand:
# |H|^2 = a^2 + b^2 + c^2 + 2(ab + bc) cos w + 2ac cos 2w.
#   [1, 1, 1]: peak at w = 0 -> 0 Hz.
#   [1, 0, -1]: |H| = 2|sin w| -> w = pi/2 -> 4000 Hz.
#   [1, 1, -0.5]: |H|^2 = 3.25 + u - 2u^2 (u = cos w), max at u = 1/4 -> 3356.6 Hz.
#   [1, -1, -0.5]: |H|^2 = 3.25 - u - 2u^2, max at u = -1/4 -> 4643.4 Hz.
TAPS = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, 1.0, -0.5], [1.0, -1.0, -0.5]])
ANALYTIC_PEAK_HZ = np.array(
    [0.0, 4000.0, np.arccos(0.25) / (2 * np.pi) * SAMPLE_RATE,
     np.arccos(-0.25) / (2 * np.pi) * SAMPLE_RATE]
)


def _known_filter_model():
  """SampleCNN (base width 4, 5 blocks) whose layer-6 filters 0-3 are the TAPS filters.

  The front conv holds TAPS with a +10 bias (so no ReLU ever clips); every block's conv is
  the identity on channels 0-3 (centre tap only), BN is the identity. Layer-6 filter c is
  then the maximum over all 243 frames of TAPS[c] . frame (+ constant): its gradient is
  TAPS[c] placed in the winning frame, so the estimate is the filter itself and its 729-point
  spectrum peaks where |H| does.
  """
  config = load_config("test", "samplecnn")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 729)), train=False)
  params = jax.tree.map(np.zeros_like, variables["params"])
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: np.ones_like(p) if path[-1].key == "scale" else p, params
  )
  params["front_conv"]["kernel"][:, 0, :] = TAPS.T
  params["front_conv"]["bias"][:] = 10.0
  for i in range(1, model.num_blocks + 1):
    params[f"block{i}"]["Conv_0"]["kernel"][1, range(4), range(4)] = 1.0
  return model, {"params": params, "batch_stats": variables["batch_stats"]}


def test_known_filters_are_recovered_at_their_spectral_peaks():
  model, variables = _known_filter_model()
  settings = visualize.default_config()
  settings.update(dict(steps=3, init_std=1e-6, layers=(1, 6)))
  first, sixth = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)

  # Layer 6 (729 samples reduced to one position): the estimate minus the starting noise is
  # one 3-sample frame proportional to the filter, and its spectral peak lies within one bin
  # of the analytic |H| peak.
  noise = sixth.estimates[4]  # Filter 4 has an all-zero kernel: its estimate never moves.
  np.testing.assert_array_equal(sixth.activation_trace[0, 4], sixth.activation_trace[-1, 4])
  for c, taps in enumerate(TAPS):
    change = sixth.estimates[c] - noise
    frame = np.abs(change).argmax() // 3 * 3
    bump = change[frame : frame + 3]
    assert np.abs(np.delete(change, range(frame, frame + 3))).max() < 1e-6 * np.abs(bump).max()
    cosine = bump @ taps / np.linalg.norm(bump) / np.linalg.norm(taps)
    assert cosine > 0.9999
  assert np.all(np.abs(sixth.peak_hz[:4] - ANALYTIC_PEAK_HZ) <= BIN_HZ)
  # Sorted by peak frequency: 0 Hz, 3357 Hz, 4000 Hz, 4643 Hz.
  order = [f for f in sixth.order if f < 4]
  assert order == [0, 2, 1, 3]

  # Layer 1 (the stride-3 front conv, averaged over its 243 frames): the estimate is the
  # filter repeated every 3 samples, so its spectrum has content only at 0 Hz and fs/3: the
  # front conv's estimates cannot show where |H| peaks (documented in docs/visualize.md).
  assert set(np.round(first.peak_hz[:4], 1)) <= {0.0, round(SAMPLE_RATE / 3, 1)}


def test_filter_spectra_sorting_and_log_compression():
  t = np.arange(729) / SAMPLE_RATE
  freqs = np.array([3000.0, 250.0, 6000.0])
  waves = np.sin(2 * np.pi * freqs[:, None] * t)
  frequencies, magnitude, log_magnitude, peak_hz, order = visualize.filter_spectra(
      waves, SAMPLE_RATE, floor_db=40.0
  )
  assert frequencies.shape == (365,) and frequencies[-1] == pytest.approx(8000 - BIN_HZ / 2)
  assert magnitude.shape == log_magnitude.shape == (3, 365)
  assert np.all(np.abs(peak_hz - freqs) <= BIN_HZ / 2)
  np.testing.assert_array_equal(order, [1, 0, 2])
  assert log_magnitude.max() == 0.0 and log_magnitude.min() == pytest.approx(-40.0)
  # A silent estimate gets the floor, not NaN.
  assert visualize.filter_spectra(np.zeros((1, 9)), SAMPLE_RATE)[2] == pytest.approx(np.full((1, 5), -60.0))


# --- What is maximised --------------------------------------------------------------------


@pytest.mark.parametrize("block", ["basic", "se", "res2", "rese1"])
def test_pre_relu_target_is_the_layer_output_before_its_relu(block):
  # 3 blocks of widths 4, 4, 16: layer 3 has an identity shortcut, layer 4 a projection.
  config = load_config("test")
  config.model.update(dict(block=block, head="gmp", multi=False, num_blocks=3))
  config.input_size = 81
  model = models.create_model(config.model, config.num_classes)
  x = jax.random.normal(jax.random.key(1), (2, 81))
  variables = model.init(jax.random.key(2), x, train=False)
  # Move BN away from the identity so that the test sees the running statistics.
  variables = {
      "params": variables["params"],
      "batch_stats": jax.tree.map(lambda s: s + 0.3, variables["batch_stats"]),
  }
  clipped = 0  # Values the final ReLU clips: the comparison must include some.
  for layer in (1, 3, 4):
    output = model.apply(variables, x, train=False, num_layers=layer)[-1]
    pre = visualize.layer_activation(model, variables, x, layer, "pre_relu")
    assert pre.shape == output.shape
    clipped += int(jnp.sum(pre < 0))
    if block == "se" and layer > 1:  # The SE gate (0, 1) scales the output, sign unchanged.
      np.testing.assert_array_equal(np.asarray(output) > 0, np.asarray(pre) > 0)
    else:
      np.testing.assert_allclose(nn.relu(pre), output, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        visualize.layer_activation(model, variables, x, layer, "output"), output
    )
  assert clipped > 0


def test_layer_input_size_reaches_every_layer():
  sizes = [visualize.layer_input_size(k) for k in range(1, 11)]
  assert sizes == [729] * 6 + [2187, 6561, 19683, 59049]
  # Output lengths: 243, 81, 27, 9, 3 (averaged) for layers 1-5, then exactly 1.
  lengths = [models.feature_lengths(n, k - 1)[-1] for k, n in enumerate(sizes, 1)]
  assert lengths == [243, 81, 27, 9, 3] + [1] * 5


def test_settings_errors_name_the_valid_choices():
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  settings = visualize.default_config()
  settings.layers = (0, 7)
  with pytest.raises(ValueError, match=r"layers \[0, 7\] do not exist: this model has layers 1..6"):
    visualize.visualize_filters(model, {}, settings)
  settings = visualize.default_config()
  settings.target = "logits"
  with pytest.raises(ValueError, match="choose one of pre_relu, output"):
    visualize.visualize_filters(model, {}, settings)


# --- Command line (untrained) and its files -------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("filters")
  paths = visualize.main([
      "visualize", f"--config={REPO / 'configs' / 'test.py'}", "--untrained",
      f"--out_dir={out}", "--steps=3", "--seed=5",
  ])
  return out, paths


def test_cli_writes_the_documented_files_and_shapes(cli_run):
  out, paths = cli_run
  names = {p.name for p in paths.values()}
  assert names == {"filters.npz", "filters.json", "filters.png"} | {
      f"layer{k:02d}_{n}.png" for k, n in enumerate(["front_conv"] + [f"block{i}" for i in range(1, 6)], 1)
  }
  for path in paths.values():
    assert path.parent == out and path.stat().st_size > 0
    if path.suffix == ".png":
      assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  data = np.load(out / "filters.npz")
  np.testing.assert_array_equal(data["layers"], [1, 2, 3, 4, 5, 6])
  assert float(data["sample_rate"]) == SAMPLE_RATE
  for k, filters in zip(range(1, 7), [4, 4, 4, 8, 8, 16], strict=True):  # Widths of configs/test.
    assert data[f"layer{k}_estimates"].shape == (filters, 729)
    assert data[f"layer{k}_activation_trace"].shape == (4, filters)  # steps + 1.
    assert data[f"layer{k}_frequencies"].shape == (365,)
    assert data[f"layer{k}_magnitude"].shape == (filters, 365)
    log = data[f"layer{k}_log_magnitude"]
    assert log.shape == (filters, 365) and np.all(log.max(axis=1) == 0) and log.min() >= -60
    peak, order = data[f"layer{k}_peak_hz"], data[f"layer{k}_order"]
    assert sorted(order) == list(range(filters)) and np.all(np.diff(peak[order]) >= 0)
  summary = json.loads((out / "filters.json").read_text())
  assert summary["settings"]["steps"] == 3 and summary["settings"]["seed"] == 5
  assert [layer["input_size"] for layer in summary["layers"]] == [729] * 6


def test_gradient_ascent_increases_every_target_activation(cli_run):
  data = np.load(cli_run[0] / "filters.npz")
  for k in range(1, 7):
    trace = data[f"layer{k}_activation_trace"]
    assert np.all(np.diff(trace, axis=0) > 0), f"layer {k}"


def test_output_target_does_not_decrease_and_same_seed_same_estimates(cli_run):
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, 729)), train=False)
  settings = visualize.default_config()
  settings.update(dict(steps=3, seed=5, layers=(1, 6), target="output"))
  for result in visualize.visualize_filters(model, variables, settings, SAMPLE_RATE):
    trace = result.activation_trace
    assert np.all(trace[-1] >= trace[0]) and np.any(trace[-1] > trace[0])
  # The CLI's run (same untrained init, seed 5) again: identical layer-1 estimates.
  settings.update(dict(target="pre_relu", layers=(1,)))
  again = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)[0]
  np.testing.assert_array_equal(again.estimates, np.load(cli_run[0] / "filters.npz")["layer1_estimates"])


def test_cli_errors_are_clear(tmp_path):
  config = f"--config={REPO / 'configs' / 'test.py'}"
  with pytest.raises(SystemExit, match="--workdir=DIR .* or --untrained"):
    visualize.main(["visualize", config])
  with pytest.raises(SystemExit, match="--out_dir"):
    visualize.main(["visualize", config, "--untrained"])
  with pytest.raises(SystemExit, match="--config is required"):
    visualize.main(["visualize", "--untrained", f"--out_dir={tmp_path}"])
  with pytest.raises(SystemExit, match="Run with --help"):
    visualize.main(["visualize", config, "--steps=many"])


def test_cli_without_checkpoint_points_to_untrained(tmp_path):
  pytest.importorskip("samplecnn_jax.checkpointing", reason="checkpointing.py not written yet")
  with pytest.raises(SystemExit, match="--untrained visualises a freshly initialised model"):
    visualize.main(["visualize", f"--config={REPO / 'configs' / 'test.py'}", f"--workdir={tmp_path}"])
