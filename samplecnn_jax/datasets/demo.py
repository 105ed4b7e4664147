"""The demo dataset: procedurally generated multi-label sound events, made from a seed.

Needs no download (`python -m samplecnn_jax.prepare demo --out prepared/demo`), and has
enough structure that a small model visibly learns it in minutes. Each clip (1.5-3 s at
16 kHz) is pink background noise with 0-3 events of different classes mixed in at 0-20 dB
SNR; the clip's labels are the classes of its events (weak labels, as in DCASE). Each class
has its own spectro-temporal shape and frequency band, and every event lasts at least 40 %
of its clip (>= 0.6 s), so a 0.4-s segment usually shows it:

  beep    steady 1 kHz tone                     siren   tone swept 1.45-2.15 kHz at 1-4 Hz
  buzz    100 Hz harmonic tone (8 partials)     chirps  80-ms up-chirps 2.5->3.5 kHz, 6-8/s
  hiss    noise band-limited to 4.5-6.5 kHz     clicks  2-ms broadband clicks, 8-12/s

A clip is a pure function of (seed, split, index): labels come from `plan_clip`, audio from
`synthesize_clip`, so generation parallelises and resumes. This module is not a benchmark
and says nothing about real-world audio.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
from absl import flags

from samplecnn_jax.datasets import common
from samplecnn_jax.datasets.common import ClipSpec, Listing

NEEDS_SOURCE = False  # `prepare demo` takes no --src.
CLASSES = ("beep", "siren", "buzz", "chirps", "hiss", "clicks")
SPLITS = ("train", "valid", "test")
SAMPLE_RATE = 16000  # Rate the demo is designed for; higher rates work too.
# Where each class puts its energy (Hz); tests check that labelled clips have energy there.
CLASS_BANDS = {
    "beep": (960.0, 1040.0),
    "siren": (1450.0, 2150.0),
    "buzz": (90.0, 850.0),
    "chirps": (2500.0, 3500.0),
    "hiss": (4500.0, 6500.0),
    "clicks": (7000.0, 7900.0),
}
EVENT_COUNT_PROBS = (0.1, 0.35, 0.35, 0.2)  # P(0, 1, 2, 3 events in a clip).
SNR_DB = (0.0, 20.0)  # Event-to-background power ratio range.
MIN_EVENT_FRACTION = 0.4  # Shortest event, as a fraction of its clip.
FADE_SECONDS = 0.02  # Raised-cosine fades, so event edges add no clicks.


@dataclasses.dataclass(frozen=True)
class Event:
  """One sound event of a planned clip."""

  label: int  # Index into CLASSES.
  start: float  # Seconds from the clip start.
  duration: float  # Seconds.
  snr_db: float  # Event power over background power, dB.
  variant: float  # In [0, 1): picks the class's free parameter (pitch jitter, rate).


def _split_index(split: str) -> int:
  if split not in SPLITS:
    raise ValueError(f"demo split must be one of {SPLITS}, got {split!r}")
  return SPLITS.index(split)


def plan_clip(seed: int, split: str, index: int, clip_seconds: float) -> tuple[float, list[Event]]:
  """The clip's length (s) and events, drawn from (seed, split, index) alone."""
  rng = np.random.default_rng([seed, _split_index(split), index, 0])
  length = float(rng.uniform(0.75, 1.5) * clip_seconds)
  count = int(rng.choice(len(EVENT_COUNT_PROBS), p=EVENT_COUNT_PROBS))
  labels = sorted(int(c) for c in rng.choice(len(CLASSES), size=count, replace=False))
  events = []
  for label in labels:
    duration = float(rng.uniform(MIN_EVENT_FRACTION, 1.0) * length)
    start = float(rng.uniform(0.0, length - duration))
    events.append(Event(label, start, duration, float(rng.uniform(*SNR_DB)), float(rng.random())))
  return length, events


def _fade(n: int, sample_rate: int) -> np.ndarray:
  envelope = np.ones(n, np.float64)
  k = min(int(FADE_SECONDS * sample_rate), n // 2)
  if k:
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
    envelope[:k], envelope[n - k :] = ramp, ramp[::-1]
  return envelope


def _fft_length(n: int) -> int:
  """A length >= n with only factors 2, 3, 5 (FFTs of prime lengths are ~100x slower)."""
  import scipy.fft

  return scipy.fft.next_fast_len(n, real=True)


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, low: float, high: float):
  m = _fft_length(n)
  spectrum = np.fft.rfft(rng.standard_normal(m))
  freqs = np.fft.rfftfreq(m, 1.0 / sample_rate)
  spectrum[(freqs < low) | (freqs > high)] = 0.0
  return np.fft.irfft(spectrum, m)[:n]


def pink_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
  """Unit-RMS noise with a 1/f power spectrum above 20 Hz."""
  m = _fft_length(n)
  spectrum = np.fft.rfft(rng.standard_normal(m))
  freqs = np.fft.rfftfreq(m, 1.0 / sample_rate)
  spectrum /= np.sqrt(np.maximum(freqs, 20.0))
  noise = np.fft.irfft(spectrum, m)[:n]
  return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def event_waveform(
    name: str, n: int, sample_rate: int, variant: float, rng: np.random.Generator
) -> np.ndarray:
  """`n` samples of class `name` (before level and fades); `variant` in [0, 1)."""
  t = np.arange(n) / sample_rate
  if name == "beep":
    return np.sin(2 * np.pi * 1000.0 * (1 + 0.02 * (2 * variant - 1)) * t)
  if name == "siren":
    rate = 1.0 + 3.0 * variant  # Sweeps per second.
    return np.sin(2 * np.pi * 1800.0 * t - (300.0 / rate) * np.cos(2 * np.pi * rate * t))
  if name == "buzz":
    f0 = 100.0 * (1 + 0.05 * (2 * variant - 1))
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 9))
  if name == "chirps":
    period, length = 1.0 / (6.0 + 2.0 * variant), 0.08
    local = np.mod(t, period)
    phase = 2 * np.pi * (2500.0 * local + 0.5 * (1000.0 / length) * local**2)
    inside = local < length
    window = np.where(inside, np.sin(np.pi * np.minimum(local / length, 1.0)) ** 2, 0.0)
    return np.sin(phase) * window
  if name == "hiss":
    return _band_noise(rng, n, sample_rate, *CLASS_BANDS["hiss"])
  if name == "clicks":
    period = 1.0 / (8.0 + 4.0 * variant)
    local = np.mod(t, period)
    return rng.standard_normal(n) * np.exp(-local / 0.0007) * (local < 0.002)
  raise ValueError(f"unknown demo class {name!r}")


def synthesize_clip(
    spec: ClipSpec, *, seed: int, clip_seconds: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
  """The float32 audio of a demo clip at `sample_rate`, a pure function of its id and seed."""
  index = int(spec.clip_id.rsplit("-", 1)[1])
  length, events = plan_clip(seed, spec.split, index, clip_seconds)
  rng = np.random.default_rng([seed, _split_index(spec.split), index, 1])
  n = int(round(length * sample_rate))
  background_rms = rng.uniform(0.01, 0.05)
  mix = pink_noise(rng, n, sample_rate) * background_rms
  for event in events:
    start = int(round(event.start * sample_rate))
    count = min(int(round(event.duration * sample_rate)), n - start)
    wave = event_waveform(CLASSES[event.label], count, sample_rate, event.variant, rng)
    wave = wave / (np.sqrt(np.mean(wave**2)) + 1e-12)
    level = background_rms * 10 ** (event.snr_db / 20)
    mix[start : start + count] += level * wave * _fade(count, sample_rate)
  peak = np.abs(mix).max()
  if peak > 0.9:
    mix *= 0.9 / peak
  return mix.astype(np.float32)


def define_flags(flag_values: flags.FlagValues) -> None:
  """The demo's own `prepare` flags: the options of `list_clips`."""
  common.define_lister_flags(flag_values, list_clips, {
      "seed": "Seed the whole dataset is made from.",
      "num_train": "Training clips.",
      "num_valid": "Validation clips.",
      "num_test": "Test clips.",
      "clip_seconds": "Mean clip length, s; clips vary x0.75-1.5.",
  })


def list_clips(
    src: Path | None = None,
    *,
    seed: int = 0,
    num_train: int = 1200,
    num_valid: int = 300,
    num_test: int = 300,
    clip_seconds: float = 2.0,
    sample_rate: int = SAMPLE_RATE,
) -> Listing:
  """Lists the demo clips (`src` is ignored); `Listing.synthesize` makes their audio."""
  if min(num_train, num_valid, num_test) < 0 or clip_seconds <= 0:
    raise ValueError("demo sizes must be >= 0 and --clip_seconds > 0")
  if sample_rate < 2 * CLASS_BANDS["clicks"][1]:
    raise ValueError("the demo needs --sample_rate >= 16000 (its bands reach 7.9 kHz)")
  clips = []
  for split, count in zip(SPLITS, (num_train, num_valid, num_test), strict=True):
    for index in range(count):
      length, events = plan_clip(seed, split, index, clip_seconds)
      labels = tuple(sorted({event.label for event in events}))
      clips.append(ClipSpec(f"{split}-{index:05d}", "", split, labels, duration=length))
  return Listing(
      name="demo",
      vocabulary=list(CLASSES),
      label_type="multi_label",
      clips=clips,
      extra={"generator": {"seed": seed, "clip_seconds": clip_seconds}},
      synthesize=functools.partial(
          synthesize_clip, seed=seed, clip_seconds=clip_seconds, sample_rate=sample_rate
      ),
  )
