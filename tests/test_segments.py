"""Tests for samplecnn_jax/segments.py: where segments start, how clips are cut and scaled, and
reading the segments of a file without decoding the rest of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import load_config

from samplecnn_jax import audio, segments, workdir_files

RATE = 16000
INPUT_SIZE = 729  # configs/test.py


def test_segment_starts_spread_evenly_and_stay_inside_the_clip():
  np.testing.assert_array_equal(segments.segment_starts(100, 16, 3), [0, 42, 84])
  np.testing.assert_array_equal(segments.segment_starts(30, 16, 3), [0, 7, 14])  # Overlapping.
  np.testing.assert_array_equal(segments.segment_starts(8, 16, 2), [0, 0])  # Shorter.
  np.testing.assert_array_equal(segments.segment_starts(50, 16, 1), [0])
  with pytest.raises(ValueError, match="num_segments"):
    segments.segment_starts(50, 16, 0)


def test_segment_clip_slices_and_zero_pads():
  clip = np.arange(1, 31, dtype=np.int16)
  cut = segments.segment_clip(clip, 16, 3)
  assert cut.shape == (3, 16) and cut.dtype == np.int16
  np.testing.assert_array_equal(cut[1], clip[7:23])
  np.testing.assert_array_equal(cut[2], clip[14:30])
  short = segments.segment_clip(clip[:5], 16, 2)
  np.testing.assert_array_equal(short[0], np.r_[clip[:5], np.zeros(11, np.int16)])
  np.testing.assert_array_equal(short[1], short[0])


def test_cover_count_and_hop_starts():
  assert segments.cover_count(100, 16) == 7 and segments.cover_count(5, 16) == 1
  assert segments.cover_count(32, 16) == 2
  np.testing.assert_array_equal(segments.hop_starts(100, 16, 40), [0, 40, 80])
  np.testing.assert_array_equal(segments.hop_starts(8, 16, 4), [0])  # Shorter than one.
  with pytest.raises(ValueError, match="hop"):
    segments.hop_starts(100, 16, 0)


def test_input_scaling_leaves_silence_near_silent_and_is_off_for_old_configs(tmp_path):
  """Digital silence (padding, dropouts) must not be blown up to full level or divided by 0."""
  scale = segments.InputScaling(standardize=False, mean=0.0, std=1.0, rms=0.1)
  clip = np.zeros((2, 64), np.float32)
  clip[1, ::2] = 1e-6  # Far below the floor: scaled as if at RMS_FLOOR.
  out = scale(clip.copy())
  assert np.all(np.isfinite(out)) and np.all(out[0] == 0)
  np.testing.assert_allclose(out[1, ::2], 1e-6 * 0.1 / segments.RMS_FLOOR, rtol=1e-5)
  saved = json.loads(load_config("test").to_json_best_effort())
  del saved["normalize_rms"]  # A config.json written before the field existed: off.
  (tmp_path / workdir_files.CONFIG_FILE).write_text(json.dumps(saved))
  legacy = workdir_files.read_config(tmp_path)
  assert segments.InputScaling.from_config(legacy).rms == 0


def _tone(seconds: float, rate: int, channels: int = 2) -> np.ndarray:
  rng = np.random.default_rng(11)
  t = np.arange(int(seconds * rate)) / rate
  mono = 0.4 * np.sin(2 * np.pi * 700 * t) + 0.2 * rng.standard_normal(len(t))
  return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def test_streamed_segments_equal_whole_file_decoding(tmp_path):
  """Issue 10 item 11: only the scored frames are read, with the whole-file result."""
  path = tmp_path / "long_stereo_44k.wav"
  sf.write(path, _tone(9.0, 44100), 44100, subtype="PCM_16")
  for count in (3, None):
    streamed, seconds = segments.read_segments(path, RATE, INPUT_SIZE, count)
    whole = audio.load_audio(path, RATE)
    k = count or -(-len(whole) // INPUT_SIZE)
    expected = segments.segment_clip(whole, INPUT_SIZE, k)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    assert seconds == pytest.approx(9.0)


def test_overlapping_windows_are_decoded_together_in_bounded_reads(tmp_path, monkeypatch):
  """A timeline's windows overlap: each frame is decoded about once, a few windows per read."""
  path = tmp_path / "stereo_22k.wav"
  sf.write(path, _tone(3.0, 22050), 22050)
  whole = audio.load_audio(path, RATE)
  starts = segments.hop_starts(len(whole), INPUT_SIZE, INPUT_SIZE // 3)
  reads = []
  read = audio.AudioFile.read
  monkeypatch.setattr(audio.AudioFile, "read",
                      lambda self, *args: reads.append(args[1]) or read(self, *args))
  with audio.AudioFile(path) as file:
    found = dict.fromkeys(range(len(starts)))
    for indices, windows in segments.read_windows(file, starts[::-1], INPUT_SIZE, RATE, 8):
      for index, window in zip(indices, windows, strict=True):
        found[len(starts) - 1 - index] = window
  assert len(reads) == -(-len(starts) // 8) and max(reads) <= INPUT_SIZE + 7 * (INPUT_SIZE // 3)
  for start, window in zip(starts, found.values(), strict=True):
    np.testing.assert_allclose(window, whole[start : start + INPUT_SIZE], atol=1e-5)


def test_segment_weights_and_pooling():
  loud, quiet, silent = (np.full(8, v, np.float32) for v in (0.5, 0.1, 0.0))
  windows = np.stack([loud, quiet, silent])
  np.testing.assert_array_equal(segments.segment_weights(windows, "mean"), [1, 1, 1])
  np.testing.assert_allclose(segments.segment_weights(windows, "rms"),
                             [0.5, 0.1, segments.RMS_FLOOR], rtol=1e-6)
  probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])
  np.testing.assert_allclose(segments.pool_segments(probabilities), [1.1 / 3, 1.9 / 3])
  # The silent segment (padding) barely counts; the loud one outweighs the quiet one 5:1.
  rms = segments.pool_segments(probabilities, segments.segment_weights(windows, "rms"))
  np.testing.assert_allclose(rms, [(0.45 + 0.02) / 0.6001, (0.05 + 0.08 + 1e-4) / 0.6001],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="segment_pooling='max'.*mean, rms"):
    segments.segment_weights(windows, "max")
