"""How a clip becomes model inputs: the segment rules, the input scaling, and a file's segments.

A clip (1-D audio at the run's sample rate) is scored as `num_segments` windows of
`input_size` samples spread evenly from its start to its end (`segment_starts`,
`segment_clip`; a clip shorter than one window is zero-padded), or as `cover_count` windows
that together cover all of it (predict's "cover" mode), or, for a timeline, as windows every
`hop` samples (`hop_starts`). The windows are then scaled as in training (`InputScaling`:
loudness normalisation, then standardisation). `read_segments` and `read_windows` cut the
windows straight from an audio file, decoding only the frames they cover.

Training and evaluation (`input_pipeline`) and prediction (`inference`) all take their
segments and scaling from here, so that they agree. This module decodes through `audio` and
knows no config files, stores, models or devices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from samplecnn_jax import audio

COVER = "cover"  # Segment mode: enough segments to cover the whole clip (`cover_count`).
RMS_FLOOR = 1e-4  # Segments quieter than this (about -80 dBFS) are scaled as if this loud.
WINDOWS_PER_READ = 256  # Most windows decoded by one read of a file (bounds the memory).
POOLINGS = ("mean", "rms")  # How a clip's segment scores combine (`config.segment_pooling`).


# --- Where the segments of a clip start -----------------------------------------------------


def segment_starts(num_samples: int, input_size: int, num_segments: int) -> np.ndarray:
  """Start samples of `num_segments` segments spread evenly from 0 to `num_samples - input_size`.

  Segments overlap when the clip is shorter than `num_segments * input_size`; a clip shorter
  than one segment gives starts of 0 (it is zero-padded by `segment_clip`).
  """
  if num_segments < 1:
    raise ValueError(f"num_segments must be >= 1, got {num_segments}")
  last = max(int(num_samples) - int(input_size), 0)
  return np.rint(np.linspace(0, last, num_segments)).astype(np.int64)


def cover_count(num_samples: int, input_size: int) -> int:
  """The number of segments that together cover a clip: ceil(num_samples / input_size), >= 1."""
  return max(1, math.ceil(num_samples / input_size))


def hop_starts(num_samples: int, input_size: int, hop: int) -> np.ndarray:
  """Start samples of the segments every `hop` samples that fit in the clip (at least one)."""
  if hop < 1:
    raise ValueError(f"hop must be >= 1 sample, got {hop}")
  return np.arange(0, max(int(num_samples) - int(input_size), 0) + 1, hop, dtype=np.int64)


def segment_clip(clip: np.ndarray, input_size: int, num_segments: int) -> np.ndarray:
  """The `(num_segments, input_size)` evaluation segments of a 1-D clip (same dtype as it)."""
  clip = np.asarray(clip)
  if len(clip) < input_size:
    clip = np.pad(clip, (0, input_size - len(clip)))
  starts = segment_starts(len(clip), input_size, num_segments)
  return np.stack([clip[start : start + input_size] for start in starts])


# --- How a clip's segment scores combine ---------------------------------------------------


def check_pooling(pooling: str) -> None:
  """Raises one line naming the valid values when `pooling` is not one of `POOLINGS`."""
  if pooling not in POOLINGS:
    raise ValueError(f"config.segment_pooling={pooling!r} is not valid; choose one of: "
                     f"{', '.join(POOLINGS)} (--config.segment_pooling=...).")


def segment_weights(windows: np.ndarray, pooling: str) -> np.ndarray:
  """The weight of each of a clip's `(k, input_size)` unscaled float segments in its score.

  "mean" (the paper) weighs them equally. "rms" weighs each by its RMS level (floored at
  `RMS_FLOOR`): segments cut from a short clip's zero padding, a drum hit's silent tail or
  the pause before a word then count for little, where an equal mean lets them outvote the
  sound itself. Computed before the input scaling (which may normalise the level away).
  """
  check_pooling(pooling)
  windows = np.asarray(windows, np.float32)
  if pooling == "mean":
    return np.ones(windows.shape[:1], np.float32)
  return np.maximum(np.sqrt(np.mean(np.square(windows), axis=-1)), RMS_FLOOR).astype(np.float32)


def pool_segments(probabilities: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """A clip's scores: the `weights`-weighted mean of its segments' probabilities (equal weights
  when None), as evaluation computes them (`metrics.clip_level_scores`)."""
  probabilities = np.asarray(probabilities, np.float64)
  if weights is None:
    return probabilities.mean(axis=0).astype(np.float32)
  weights = np.asarray(weights, np.float64)
  return (weights @ probabilities / weights.sum()).astype(np.float32)


# --- Input scaling --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputScaling:
  """The scaling of model inputs, applied in place to segments in training, evaluation and
  prediction alike.

  `rms > 0` scales each segment to that RMS first (loudness normalisation: real
  recordings differ in level by tens of dB, which a few hundred clips cannot teach the model
  to ignore); `standardize` then applies the dataset standardisation (x - mean) / std.
  """

  standardize: bool
  mean: float
  std: float
  rms: float = 0.0

  @classmethod
  def from_config(cls, config: Any) -> InputScaling:
    """From `config.standardize`, `audio_mean`, `audio_std` and `normalize_rms`."""
    if config.standardize and not config.audio_std > 0:
      raise ValueError(f"config.audio_std must be > 0 to standardise, got {config.audio_std}.")
    rms = float(config.normalize_rms)  # Old config.json: 0 via workdir_files.read_config.
    if rms < 0:
      raise ValueError(f"config.normalize_rms must be >= 0 (0 = off), got {rms}.")
    return cls(bool(config.standardize), float(config.audio_mean), float(config.audio_std), rms)

  def __call__(self, segments: np.ndarray) -> np.ndarray:
    """Scales float32 `segments` (..., samples) in place and returns them."""
    if self.rms > 0:
      level = np.sqrt(np.mean(np.square(segments), axis=-1, keepdims=True))
      segments *= (self.rms / np.maximum(level, RMS_FLOOR)).astype(np.float32)
    if self.standardize:
      segments -= np.float32(self.mean)
      segments *= np.float32(1.0 / self.std)
    return segments


# --- Segments of audio files ----------------------------------------------------------------


def read_windows(
    file: audio.AudioFile, starts: Sequence[int], input_size: int, sample_rate: int,
    max_windows: int = WINDOWS_PER_READ,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields `(indices, windows)`: `windows[j]` is the `input_size` samples at `sample_rate` from
  `starts[indices[j]]` (zero-padded past the end of the file), in the order of the starts.

  Windows that overlap (a timeline's, or the segments of a short clip) are decoded by one
  read of at most `max_windows` of them, so every frame is decoded about once while memory
  stays bounded for files of any length; a window that overlaps no other is read alone.
  Raises `audio.AudioError` as `AudioFile.read` does.
  """
  starts = np.asarray(starts, np.int64)
  order = np.argsort(starts, kind="stable")
  first = 0
  while first < len(order):
    block_start = int(starts[order[first]])
    block_end, end = block_start + input_size, first + 1
    while end < len(order) and end - first < max_windows and starts[order[end]] < block_end:
      block_end = int(starts[order[end]]) + input_size
      end += 1
    block = file.read(block_start, block_end - block_start, sample_rate)
    indices = order[first:end]
    windows = np.zeros((len(indices), input_size), np.float32)
    for row, index in enumerate(indices):
      offset = int(starts[index]) - block_start
      piece = block[offset : offset + input_size]
      windows[row, : len(piece)] = piece
    yield indices, windows
    first = end


def read_segments(
    path: str | os.PathLike,
    sample_rate: int,
    input_size: int,
    num_segments: int | None,
    scaling: InputScaling | None = None,
    starts: Sequence[int] | None = None,
) -> tuple[np.ndarray, float]:
  """The evaluation segments of a file, reading only the frames they cover; (segments, seconds).

  Equal (within resampling round-off) to `segment_clip(audio.load_audio(path, sample_rate),
  ...)` but a 20-minute file costs what a 1-second one does (`read_windows`).
  `num_segments=None` covers the whole clip (`cover_count` segments); `starts` (samples at
  `sample_rate`) overrides both. `scaling` is applied when given. Raises `audio.AudioError`
  as `audio.load_audio` does.
  """
  with audio.AudioFile(path) as file:
    if starts is None:
      length = file.num_samples(sample_rate)
      count = num_segments or cover_count(length, input_size)
      starts = segment_starts(length, input_size, count)
    segments = np.zeros((len(starts), input_size), np.float32)
    for indices, windows in read_windows(file, starts, input_size, sample_rate):
      segments[indices] = windows
    seconds = file.seconds
  if scaling is not None:
    segments = scaling(segments)
  return segments, seconds
