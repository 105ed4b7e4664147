"""Tests for samplecnn_jax.filters: known filters are recovered, ascent ascends, settings checked.

Tiny widths only (configs/test.py: base width 4, 5 blocks, 729 samples); each layer costs
one compile, so one untrained run is shared by the tests that read its estimates.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from samplecnn_jax import filters, models, spectra

SAMPLE_RATE = 16000.0


# --- Ground truth: units that are known band-pass filters ---------------------------------

BAND_HZ = np.array([2500.0, 3500.0, 5000.0, 6500.0])  # Centre of each unit's 9-tap kernel.


def _band_pass_kernels() -> np.ndarray:
  """(4, 9): Hann-windowed cosines, 9 taps at 16 kHz: band-pass filters 1.8 kHz wide."""
  n = np.arange(9)
  return np.hanning(11)[1:-1] * np.cos(2 * np.pi * BAND_HZ[:, None] * n / SAMPLE_RATE)


def _peak_hz(kernels: np.ndarray) -> np.ndarray:
  """Where |H(f)| of each kernel peaks, from an 8192-point FFT (1.95 Hz resolution)."""
  frequencies = np.fft.rfftfreq(8192, 1 / SAMPLE_RATE)
  return frequencies[np.abs(np.fft.rfft(kernels, 8192, axis=1)).argmax(axis=1)]


def _band_pass_model():
  """The real SampleCNN (base width 8, 5 blocks) whose layer-6 units 0-3 are band-pass filters.

  The front conv passes the three samples of each frame as +x (channels 0-2) and -x
  (channels 3-5), so ReLU(+x) - ReLU(-x) = x reaches block 1 unclipped; block 1's conv
  (3 taps x 3 samples) is the 9-tap kernel `_band_pass_kernels()[c]` on unit c, with a BN
  offset of +100 so its ReLU never clips; blocks 2-5 pass channels 0-3 on (centre tap).
  Layer-6 unit c is then the maximum, over every stride-3 position, of kernel c's response
  plus a constant: its maximiser at a fixed norm is kernel c placed in one frame, whose
  spectrum peaks where |H| does.
  """
  config = load_config("test", "samplecnn")
  config.model.base_width = 8
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 729)), train=False)
  params = jax.tree.map(np.zeros_like, variables["params"])
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: np.ones_like(p) if path[-1].key == "scale" else p, params
  )
  params["front_conv"]["kernel"][range(3), 0, range(3)] = 1.0
  params["front_conv"]["kernel"][range(3), 0, range(3, 6)] = -1.0
  taps = _band_pass_kernels().reshape(4, 3, 3).transpose(1, 2, 0)  # (position, sample, unit).
  params["block1"]["Conv_0"]["kernel"][:, 0:3, :4] = taps
  params["block1"]["Conv_0"]["kernel"][:, 3:6, :4] = -taps
  params["block1"]["BatchNorm_0"]["bias"][:4] = 100.0
  for i in range(2, model.num_blocks + 1):
    params[f"block{i}"]["Conv_0"]["kernel"][1, range(4), range(4)] = 1.0
  return model, {"params": params, "batch_stats": variables["batch_stats"]}


def test_band_pass_units_are_recovered_within_a_sixth_of_an_octave():
  model, variables = _band_pass_model()
  settings = filters.default_config()  # The defaults, stop rule included.
  settings.layers = (6,)
  (result,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  truth = _peak_hz(_band_pass_kernels())
  assert np.all(np.abs(np.log2(result.peak_hz[:4] / truth)) < 1 / 6), (result.peak_hz[:4], truth)
  assert np.all(result.converged_step[:4] >= 0)  # The stop rule held before `steps`.
  for c, kernel in enumerate(_band_pass_kernels()):  # The estimate is the kernel in one frame.
    frame = np.abs(np.correlate(result.estimates[c], kernel, mode="valid")).argmax()
    bump = result.estimates[c, frame : frame + 9]
    assert np.sum(bump**2) > 0.99 * np.sum(result.estimates[c] ** 2)
    assert bump @ kernel / np.linalg.norm(bump) / np.linalg.norm(kernel) > 0.99
  np.testing.assert_allclose(np.sqrt(np.mean(result.estimates**2, axis=1)), settings.input_rms, rtol=1e-4)
  # Sorted by peak frequency, and every estimate far from white noise (flatness 0.56).
  assert [f for f in result.order if f < 4] == [0, 1, 2, 3]
  assert np.all(result.flatness[:4] < 0.3)


def test_probe_tones_have_the_input_rms_and_each_band_pass_unit_picks_its_band():
  bank = filters.tone_bank(96, 729, SAMPLE_RATE, 1e-3)
  assert bank.shape == (96 * filters.TONE_PHASES, 729)
  np.testing.assert_allclose(np.sqrt(np.mean(bank.astype(np.float64) ** 2, axis=1)), 1e-3, rtol=1e-4)
  model, variables = _band_pass_model()
  tones = filters.best_tones(model, variables, 6, filters.default_config(), 729, SAMPLE_RATE)
  hz = spectra.filter_spectra(tones[:4], SAMPLE_RATE)["peak_hz"]
  truth = _peak_hz(_band_pass_kernels())
  assert np.all(np.abs(np.log2(hz / truth)) < 1 / 3), (hz, truth)  # In the unit's band.


def test_front_conv_estimates_are_the_filter_tiled_with_period_three():
  # Layer 1 is linear and averaged over its 243 frames: the norm-constrained maximiser is
  # the filter repeated every 3 samples, whose spectrum has lines at 0 Hz and fs/3 only, so
  # the front conv cannot show where its |H| peaks (documented in docs/filters.md).
  model, variables = _band_pass_model()
  settings = filters.default_config()
  settings.layers = (1,)
  (result,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  for c in range(3):
    expected = np.tile(np.eye(3)[c], 243)
    cosine = result.estimates[c] @ expected / np.linalg.norm(result.estimates[c]) / np.linalg.norm(expected)
    assert cosine > 0.999
  assert np.all(result.converged_step[:6] >= 0)


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
    pre = filters.layer_activation(model, variables, x, layer, "pre_relu")
    assert pre.shape == output.shape
    clipped += int(jnp.sum(pre < 0))
    if block == "se" and layer > 1:  # The SE gate (0, 1) scales the output, sign unchanged.
      np.testing.assert_array_equal(np.asarray(output) > 0, np.asarray(pre) > 0)
    else:
      np.testing.assert_allclose(nn.relu(pre), output, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        filters.layer_activation(model, variables, x, layer, "output"), output
    )
  assert clipped > 0


def test_layer_input_size_reaches_every_layer():
  sizes = [filters.layer_input_size(k) for k in range(1, 11)]
  assert sizes == [729] * 6 + [2187, 6561, 19683, 59049]
  # Output lengths: 243, 81, 27, 9, 3 (averaged) for layers 1-5, then exactly 1.
  lengths = [models.feature_lengths(n, k - 1)[-1] for k, n in enumerate(sizes, 1)]
  assert lengths == [243, 81, 27, 9, 3] + [1] * 5


def test_settings_errors_name_the_valid_choices():
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  settings = filters.default_config()
  settings.layers = (0, 7)
  with pytest.raises(ValueError, match=r"layers \[0, 7\] do not exist: this model has layers 1..6"):
    filters.estimate_filters(model, {}, settings)
  settings = filters.default_config()
  settings.target = "logits"
  with pytest.raises(ValueError, match="choose one of pre_relu, output"):
    filters.estimate_filters(model, {}, settings)
  settings = filters.default_config()
  settings.init = "zeros"
  with pytest.raises(ValueError, match="Unknown init 'zeros'; choose one of tone, noise"):
    filters.estimate_filters(model, {}, settings)


# --- An untrained run (the settings of test_visualize's command run) ----------------------

RUN_LAYERS = (1, 2, 6)  # Widths 4, 4, 16 in configs/test.py; each layer costs a compile.


@pytest.fixture(scope="module")
def untrained_run():
  """Layers 1, 2 and 6 of configs/test.py's untrained model: 12 steps, seed 5, two seeds."""
  config = load_config("test")
  model, variables = filters.load_model(config)
  settings = filters.default_config()
  settings.update(dict(steps=12, window=4, seed=5, stability_seeds=2, layers=RUN_LAYERS))
  results = filters.estimate_filters(model, variables, settings, config.sample_rate)
  return {r.layer: r for r in results}


def test_ascent_increases_every_target_activation_and_estimates_keep_their_rms(untrained_run):
  for k in RUN_LAYERS:
    trace = untrained_run[k].activation_trace
    assert np.all(trace[-1] > trace[0]), f"layer {k}"
    rms = np.sqrt(np.mean(untrained_run[k].estimates ** 2, axis=1))
    np.testing.assert_allclose(rms, filters.default_config().input_rms, rtol=1e-4)


def test_every_filter_has_its_own_starting_noise_and_same_seed_same_estimates(untrained_run):
  noise = np.asarray(filters.starting_noise(5, 2, 4, 729, 1.0))
  assert np.abs(np.corrcoef(noise)[np.triu_indices(4, 1)]).max() < 0.2
  np.testing.assert_array_equal(noise[:2], filters.starting_noise(5, 2, 2, 729, 1.0))
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, 729)), train=False)
  settings = filters.default_config()
  settings.update(dict(steps=12, window=4, seed=5, layers=(2,)))
  again = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)[0]
  np.testing.assert_array_equal(again.estimates, untrained_run[2].estimates)
  settings.target = "output"
  (result,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  assert np.all(result.activation_trace[-1] >= result.activation_trace[0])


def test_noise_init_also_recovers_the_band_pass_units_and_tone_init_is_seed_independent():
  model, variables = _band_pass_model()
  settings = filters.default_config()
  settings.update(dict(layers=(6,), init="noise"))
  (result,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  truth = _peak_hz(_band_pass_kernels())
  assert np.all(np.abs(np.log2(result.peak_hz[:4] / truth)) < 1 / 6), (result.peak_hz[:4], truth)
  # With the tone start, two seeds differ only by their small noise: the same spectra.
  settings.update(dict(init="tone", stability_seeds=2))
  (result,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  assert np.all(result.seed_r[:4] > 0.99) and np.all(result.seed_peaks_agree[:4])


def test_restarts_keep_the_best_start_of_each_filter():
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 729)), train=False)
  settings = filters.default_config()
  settings.update(dict(steps=8, window=4, layers=(3,)))
  (single,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  settings.restarts = 3
  (best,) = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  assert best.estimates.shape == single.estimates.shape
  # Start 0 of each filter is the single run, so the best of three is at least as high.
  assert np.all(best.activation_trace[-1] >= single.activation_trace[-1] - 1e-6)
