"""Spectra of filter estimates and how alike two seeds' estimates are: pure numpy.

The definitions of `../shared/tools/figure2_stability.py`, which reads the `filters.npz` that
`samplecnn_jax.visualize` writes: power spectrum of the mean-removed, Hann-windowed estimate
without its DC bin, log of it smoothed over 9 bins, flatness = geometric / arithmetic mean of
the power, peaks agree within a sixth of an octave.

What this module is not for: finding the estimates (`samplecnn_jax.filters`, JAX) or drawing
and writing them (`samplecnn_jax.visualize`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SMOOTH_BINS = 9  # Log spectra are smoothed over this many bins before peaks and correlations.
AGREE_OCTAVES = 1 / 6  # Two peaks agree when they are less than this far apart.


def power_spectrum(estimates: np.ndarray) -> np.ndarray:
  """Hann-windowed power spectrum of the mean-removed estimates, DC bin dropped: `(F, L//2)`."""
  x = np.asarray(estimates, np.float64)
  window = np.hanning(x.shape[-1])
  spectrum = np.fft.rfft((x - x.mean(-1, keepdims=True)) * window, axis=-1)[..., 1:]
  return np.abs(spectrum) ** 2 + 1e-20


def smoothed_log_power(power: np.ndarray) -> np.ndarray:
  """10 log10 of the power averaged over SMOOTH_BINS neighbouring bins (zero-padded ends)."""
  kernel = np.ones(SMOOTH_BINS) / SMOOTH_BINS
  smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), -1, power)
  return 10 * np.log10(smooth)


def spectral_flatness(power: np.ndarray) -> np.ndarray:
  """Geometric / arithmetic mean of each power spectrum (white noise of 729 samples: 0.56)."""
  return np.exp(np.log(power).mean(-1)) / power.mean(-1)


def filter_spectra(
    estimates: np.ndarray, sample_rate: float, floor_db: float = 60.0
) -> dict[str, np.ndarray]:
  """Spectra of `(filters, samples)` estimates, as `filters.LayerFilters` fields.

  `magnitude` is |rfft| of the raw estimate; `log_magnitude` (what the figures show) is the
  smoothed log power above, in dB re each filter's maximum and floored at -floor_db, with
  the DC bin at the floor; `peak_hz` is where it is largest, `order` sorts the filters by
  it (stable, so ties keep filter order) and `flatness` is the spectral flatness.
  """
  estimates = np.asarray(estimates, np.float64)
  frequencies = np.fft.rfftfreq(estimates.shape[1], d=1.0 / sample_rate)
  power = power_spectrum(estimates)
  log_power = smoothed_log_power(power)
  relative = np.maximum(log_power - log_power.max(axis=1, keepdims=True), -floor_db)
  log_magnitude = np.concatenate([np.full((len(estimates), 1), -floor_db), relative], axis=1)
  peak_hz = frequencies[1:][log_power.argmax(axis=1)]
  return dict(
      frequencies=frequencies,
      magnitude=np.abs(np.fft.rfft(estimates, axis=1)),
      log_magnitude=log_magnitude,
      peak_hz=peak_hz,
      order=np.argsort(peak_hz, kind="stable"),
      flatness=spectral_flatness(power),
  )


def seed_stability(
    first: np.ndarray, second: np.ndarray, sample_rate: float
) -> dict[str, np.ndarray]:
  """Per filter, how alike the estimates of two seeds are: `r` and `peaks_agree`.

  `r`: Pearson correlation of the two mean-removed smoothed log power spectra; `peaks_agree`:
  their maxima are less than a sixth of an octave apart.
  """
  a, b = smoothed_log_power(power_spectrum(first)), smoothed_log_power(power_spectrum(second))
  a -= a.mean(-1, keepdims=True)
  b -= b.mean(-1, keepdims=True)
  r = (a * b).sum(-1) / np.sqrt((a**2).sum(-1) * (b**2).sum(-1))
  frequencies = np.fft.rfftfreq(np.shape(first)[-1], 1.0 / sample_rate)[1:]
  octaves = np.abs(np.log2(frequencies[a.argmax(-1)] / frequencies[b.argmax(-1)]))
  return {"r": r, "peaks_agree": octaves < AGREE_OCTAVES}


def mean_seed_stability(
    first: np.ndarray, others: Sequence[np.ndarray], sample_rate: float
) -> dict[str, np.ndarray]:
  """`seed_stability` of `first` against each of `others`, averaged over them, per filter.

  `r` is the mean correlation and `peaks_agree` the share of the other seeds whose peak
  agrees with `first`'s.
  """
  pairs = [seed_stability(first, other, sample_rate) for other in others]
  return {
      "r": np.mean([p["r"] for p in pairs], axis=0),
      "peaks_agree": np.mean([p["peaks_agree"] for p in pairs], axis=0),
  }
