"""Tests for samplecnn_jax.spectra: spectra, flatness and seed stability on known signals."""

from __future__ import annotations

import numpy as np
import pytest

from samplecnn_jax import spectra

SAMPLE_RATE = 16000.0
BIN_HZ = SAMPLE_RATE / 729  # 21.9 Hz: the FFT bin of a 729-sample estimate.


def test_filter_spectra_sorting_and_log_compression():
  t = np.arange(729) / SAMPLE_RATE
  freqs = np.array([3000.0, 250.0, 6000.0])
  waves = np.sin(2 * np.pi * freqs[:, None] * t)
  result = spectra.filter_spectra(waves, SAMPLE_RATE, floor_db=40.0)
  assert result["frequencies"].shape == (365,)
  assert result["frequencies"][-1] == pytest.approx(8000 - BIN_HZ / 2)
  assert result["magnitude"].shape == result["log_magnitude"].shape == (3, 365)
  assert np.all(np.abs(result["peak_hz"] - freqs) <= BIN_HZ)
  np.testing.assert_array_equal(result["order"], [1, 0, 2])
  log = result["log_magnitude"]
  assert np.all(log.max(axis=1) == 0.0) and log.min() == pytest.approx(-40.0)
  np.testing.assert_array_equal(log[:, 0], -40.0)  # DC is not shown.
  # Flatness: a sine ~0, white noise of 729 samples ~0.56 (the reference values).
  noise = np.random.default_rng(0).normal(size=(64, 729))
  assert np.all(result["flatness"] < 0.05)
  assert np.median(spectra.filter_spectra(noise, SAMPLE_RATE)["flatness"]) == pytest.approx(0.56, abs=0.02)
  # A silent estimate gets finite values, not NaN.
  assert np.all(np.isfinite(spectra.filter_spectra(np.zeros((1, 9)), SAMPLE_RATE)["log_magnitude"]))


def test_seed_stability_of_identical_shifted_and_unrelated_estimates():
  t = np.arange(729) / SAMPLE_RATE
  tone = np.sin(2 * np.pi * np.array([[500.0], [4000.0]]) * t) * np.hanning(729)
  same = spectra.seed_stability(tone, np.roll(tone, 100, axis=1), SAMPLE_RATE)
  assert np.all(same["r"] > 0.95) and np.all(same["peaks_agree"])
  other = spectra.seed_stability(tone, tone[[1, 0]], SAMPLE_RATE)
  assert np.all(~other["peaks_agree"]) and np.all(other["r"] < 0.5)


def test_mean_seed_stability_averages_the_pairs():
  t = np.arange(729) / SAMPLE_RATE
  tone = np.sin(2 * np.pi * np.array([[500.0], [4000.0]]) * t) * np.hanning(729)
  others = [np.roll(tone, 100, axis=1), tone[[1, 0]]]
  mean = spectra.mean_seed_stability(tone, others, SAMPLE_RATE)
  pairs = [spectra.seed_stability(tone, other, SAMPLE_RATE) for other in others]
  np.testing.assert_allclose(mean["r"], (pairs[0]["r"] + pairs[1]["r"]) / 2)
  np.testing.assert_array_equal(mean["peaks_agree"], [0.5, 0.5])  # One of two seeds agrees.
