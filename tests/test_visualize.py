"""Tests for samplecnn_jax.visualize: known filters are recovered, ascent ascends, CLI files.

Tiny widths only (configs/test.py: base width 4, 5 blocks, 729 samples); each layer costs
one compile, so the CLI run is shared by the tests that read its files.
"""

from __future__ import annotations

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, load_config

from samplecnn_jax import models, visualize

SAMPLE_RATE = 16000.0
BIN_HZ = SAMPLE_RATE / 729  # 21.9 Hz: the FFT bin of a 729-sample estimate.


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
  settings = visualize.default_config()  # The defaults, stop rule included.
  settings.layers = (6,)
  (result,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
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
  bank = visualize.tone_bank(96, 729, SAMPLE_RATE, 1e-3)
  assert bank.shape == (96 * visualize.TONE_PHASES, 729)
  np.testing.assert_allclose(np.sqrt(np.mean(bank.astype(np.float64) ** 2, axis=1)), 1e-3, rtol=1e-4)
  model, variables = _band_pass_model()
  tones = visualize.best_tones(model, variables, 6, visualize.default_config(), 729, SAMPLE_RATE)
  hz = visualize.filter_spectra(tones[:4], SAMPLE_RATE)["peak_hz"]
  truth = _peak_hz(_band_pass_kernels())
  assert np.all(np.abs(np.log2(hz / truth)) < 1 / 3), (hz, truth)  # In the unit's band.


def test_front_conv_estimates_are_the_filter_tiled_with_period_three():
  # Layer 1 is linear and averaged over its 243 frames: the norm-constrained maximiser is
  # the filter repeated every 3 samples, whose spectrum has lines at 0 Hz and fs/3 only, so
  # the front conv cannot show where its |H| peaks (documented in docs/visualize.md).
  model, variables = _band_pass_model()
  settings = visualize.default_config()
  settings.layers = (1,)
  (result,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  for c in range(3):
    expected = np.tile(np.eye(3)[c], 243)
    cosine = result.estimates[c] @ expected / np.linalg.norm(result.estimates[c]) / np.linalg.norm(expected)
    assert cosine > 0.999
  assert np.all(result.converged_step[:6] >= 0)


def test_filter_spectra_sorting_and_log_compression():
  t = np.arange(729) / SAMPLE_RATE
  freqs = np.array([3000.0, 250.0, 6000.0])
  waves = np.sin(2 * np.pi * freqs[:, None] * t)
  spectra = visualize.filter_spectra(waves, SAMPLE_RATE, floor_db=40.0)
  assert spectra["frequencies"].shape == (365,)
  assert spectra["frequencies"][-1] == pytest.approx(8000 - BIN_HZ / 2)
  assert spectra["magnitude"].shape == spectra["log_magnitude"].shape == (3, 365)
  assert np.all(np.abs(spectra["peak_hz"] - freqs) <= BIN_HZ)
  np.testing.assert_array_equal(spectra["order"], [1, 0, 2])
  log = spectra["log_magnitude"]
  assert np.all(log.max(axis=1) == 0.0) and log.min() == pytest.approx(-40.0)
  np.testing.assert_array_equal(log[:, 0], -40.0)  # DC is not shown.
  # Flatness: a sine ~0, white noise of 729 samples ~0.56 (the reference values).
  noise = np.random.default_rng(0).normal(size=(64, 729))
  assert np.all(spectra["flatness"] < 0.05)
  assert np.median(visualize.filter_spectra(noise, SAMPLE_RATE)["flatness"]) == pytest.approx(0.56, abs=0.02)
  # A silent estimate gets finite values, not NaN.
  assert np.all(np.isfinite(visualize.filter_spectra(np.zeros((1, 9)), SAMPLE_RATE)["log_magnitude"]))


def test_seed_stability_of_identical_shifted_and_unrelated_estimates():
  t = np.arange(729) / SAMPLE_RATE
  tone = np.sin(2 * np.pi * np.array([[500.0], [4000.0]]) * t) * np.hanning(729)
  same = visualize.seed_stability(tone, np.roll(tone, 100, axis=1), SAMPLE_RATE)
  assert np.all(same["r"] > 0.95) and np.all(same["peaks_agree"])
  other = visualize.seed_stability(tone, tone[[1, 0]], SAMPLE_RATE)
  assert np.all(~other["peaks_agree"]) and np.all(other["r"] < 0.5)


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
  settings = visualize.default_config()
  settings.init = "zeros"
  with pytest.raises(ValueError, match="Unknown init 'zeros'; choose one of tone, noise"):
    visualize.visualize_filters(model, {}, settings)


# --- Command line (untrained) and its files -------------------------------------------------

CLI_LAYERS = (1, 2, 6)  # Widths 4, 4, 16 in configs/test.py; each layer costs a compile.
TOOL = REPO.parent / "shared" / "tools" / "figure2_stability.py"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("filters")
  paths = visualize.main([
      "visualize", f"--config={REPO / 'configs' / 'test.py'}", "--untrained",
      f"--out_dir={out}", "--steps=12", "--window=4", "--seed=5", "--stability_seeds=2",
      "--layers=" + ",".join(map(str, CLI_LAYERS)),
  ])
  return out, paths


def test_cli_writes_the_documented_files_and_shapes(cli_run):
  out, paths = cli_run
  assert {p.relative_to(out).as_posix() for p in paths.values()} == {
      "filters.npz", "filters.json", "filters.png", "seed1/filters.npz",
      "layer01_front_conv.png", "layer02_block1.png", "layer06_block5.png",
  }
  for path in paths.values():
    assert path.stat().st_size > 0
    if path.suffix == ".png":
      assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  data = np.load(out / "filters.npz")
  np.testing.assert_array_equal(data["layers"], CLI_LAYERS)
  assert float(data["sample_rate"]) == SAMPLE_RATE
  summary = json.loads((out / "filters.json").read_text())
  for k, filters, line in zip(CLI_LAYERS, [4, 4, 16], summary["layers"], strict=True):
    assert data[f"layer{k}_estimates"].shape == (filters, 729)
    trace = data[f"layer{k}_activation_trace"]
    assert trace.shape == (line["steps_run"] + 1, filters) and 1 <= line["steps_run"] <= 12
    stop = data[f"layer{k}_converged_step"]
    assert stop.shape == (filters,) and np.all((stop == -1) | ((stop >= 4) & (stop < 12)))
    assert line["converged"] == pytest.approx(np.mean(stop >= 0))
    assert data[f"layer{k}_frequencies"].shape == (365,)
    assert data[f"layer{k}_magnitude"].shape == (filters, 365)
    log = data[f"layer{k}_log_magnitude"]
    assert log.shape == (filters, 365) and np.all(log.max(axis=1) == 0) and log.min() >= -60
    peak, order = data[f"layer{k}_peak_hz"], data[f"layer{k}_order"]
    assert sorted(order) == list(range(filters)) and np.all(np.diff(peak[order]) >= 0)
    assert line["median_flatness"] == pytest.approx(np.median(data[f"layer{k}_flatness"]))
    assert 0 <= line["peak_agreement"] <= 1 and -1 <= line["median_seed_r"] <= 1
  assert summary["settings"]["steps"] == 12 and summary["settings"]["seed"] == 5
  assert [line["input_size"] for line in summary["layers"]] == [729] * 3
  seed1 = np.load(out / "seed1" / "filters.npz")
  assert not np.allclose(seed1["layer6_estimates"], data["layer6_estimates"])


@pytest.mark.skipif(not TOOL.is_file(), reason="the shared measurement script is not beside the repo")
def test_filters_json_stability_matches_the_shared_script(cli_run):
  out, _ = cli_run
  layers = ",".join(map(str, CLI_LAYERS))
  printed = subprocess.run(
      [sys.executable, str(TOOL), str(out), str(out / "seed1"), layers],
      capture_output=True, text=True, check=False,
  ).stdout
  expected = "; ".join(
      f"L{line['layer']} r={line['median_seed_r']:.2f} agree={line['peak_agreement']:.2f} "
      f"flat={line['median_flatness']:.2f}"
      for line in json.loads((out / "filters.json").read_text())["layers"]
  )
  assert printed.strip() == expected


def test_ascent_increases_every_target_activation_and_estimates_keep_their_rms(cli_run):
  data = np.load(cli_run[0] / "filters.npz")
  for k in CLI_LAYERS:
    trace = data[f"layer{k}_activation_trace"]
    assert np.all(trace[-1] > trace[0]), f"layer {k}"
    rms = np.sqrt(np.mean(data[f"layer{k}_estimates"] ** 2, axis=1))
    np.testing.assert_allclose(rms, visualize.default_config().input_rms, rtol=1e-4)


def test_every_filter_has_its_own_starting_noise_and_same_seed_same_estimates(cli_run):
  noise = np.asarray(visualize.starting_noise(5, 2, 4, 729, 1.0))
  assert np.abs(np.corrcoef(noise)[np.triu_indices(4, 1)]).max() < 0.2
  np.testing.assert_array_equal(noise[:2], visualize.starting_noise(5, 2, 2, 729, 1.0))
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, 729)), train=False)
  settings = visualize.default_config()
  settings.update(dict(steps=12, window=4, seed=5, layers=(2,)))
  again = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)[0]
  np.testing.assert_array_equal(again.estimates, np.load(cli_run[0] / "filters.npz")["layer2_estimates"])
  settings.target = "output"
  (result,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  assert np.all(result.activation_trace[-1] >= result.activation_trace[0])


def test_noise_init_also_recovers_the_band_pass_units_and_tone_init_is_seed_independent():
  model, variables = _band_pass_model()
  settings = visualize.default_config()
  settings.update(dict(layers=(6,), init="noise"))
  (result,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  truth = _peak_hz(_band_pass_kernels())
  assert np.all(np.abs(np.log2(result.peak_hz[:4] / truth)) < 1 / 6), (result.peak_hz[:4], truth)
  # With the tone start, two seeds differ only by their small noise: the same spectra.
  settings.update(dict(init="tone", stability_seeds=2))
  (result,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  assert np.all(result.seed_r[:4] > 0.99) and np.all(result.seed_peaks_agree[:4])


def test_restarts_keep_the_best_start_of_each_filter():
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 729)), train=False)
  settings = visualize.default_config()
  settings.update(dict(steps=8, window=4, layers=(3,)))
  (single,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  settings.restarts = 3
  (best,) = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  assert best.estimates.shape == single.estimates.shape
  # Start 0 of each filter is the single run, so the best of three is at least as high.
  assert np.all(best.activation_trace[-1] >= single.activation_trace[-1] - 1e-6)


def test_figure_has_one_column_per_run_and_one_row_per_layer():
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 729)), train=False)
  settings = visualize.default_config()
  settings.update(dict(steps=2, layers=(1, 2)))
  results = visualize.visualize_filters(model, variables, settings, SAMPLE_RATE)
  figure = visualize.plot_runs([("a", results), ("b", results[:1]), ("c", results)])
  panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
  assert len(panels) == 2 * 3
  assert [ax.get_title() for ax in panels[:3]] == ["a", "b", "c"]  # Row 1, one per run.
  assert not panels[4].axison  # Run b has no layer 2.
  assert panels[0].get_ylim() == (0.0, 8.0)


def test_cli_errors_are_clear(tmp_path):
  config = f"--config={REPO / 'configs' / 'test.py'}"
  with pytest.raises(SystemExit, match="--workdir=DIR .* or --untrained"):
    visualize.main(["visualize", config])
  with pytest.raises(SystemExit, match="--out_dir"):
    visualize.main(["visualize", config, "--untrained"])
  with pytest.raises(SystemExit, match="--untrained needs --config"):
    visualize.main(["visualize", "--untrained", f"--out_dir={tmp_path}"])
  with pytest.raises(SystemExit, match="Run with --help"):
    visualize.main(["visualize", config, "--steps=many"])
  with pytest.raises(SystemExit, match="several --workdir, give --out_dir"):
    visualize.main(["visualize", f"--workdir={tmp_path}", f"--workdir={tmp_path}"])
  with pytest.raises(SystemExit, match="has no config.json"):
    visualize.main(["visualize", f"--workdir={tmp_path}"])


def test_cli_reads_the_workdir_config_and_without_checkpoint_points_to_untrained(tmp_path):
  (tmp_path / "config.json").write_text(load_config("test").to_json())
  with pytest.raises(SystemExit, match="--untrained visualises a freshly initialised model"):
    visualize.main(["visualize", f"--workdir={tmp_path}"])
