"""Tests for samplecnn_jax.datasets.demo: determinism, sizes, and labels that match the audio."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
from sklearn.metrics import roc_auc_score

from samplecnn_jax.datasets import demo

RATE = demo.SAMPLE_RATE


def _audio(listing):
  return [listing.synthesize(clip) for clip in listing.clips]


def test_same_seed_same_clips_and_bytes_different_seed_differs():
  a = demo.list_clips(seed=3, num_train=6, num_valid=2, num_test=2)
  b = demo.list_clips(seed=3, num_train=6, num_valid=2, num_test=2)
  c = demo.list_clips(seed=4, num_train=6, num_valid=2, num_test=2)
  assert a.clips == b.clips
  assert all(x.tobytes() == y.tobytes() for x, y in zip(_audio(a), _audio(b), strict=True))
  assert [clip.labels for clip in a.clips] != [clip.labels for clip in c.clips]
  pairs = zip(_audio(a), _audio(c), strict=True)
  assert all(x.shape != y.shape or (x != y).any() for x, y in pairs)


def test_a_clip_depends_only_on_seed_split_and_index():
  small = demo.list_clips(seed=0, num_train=3, num_valid=1, num_test=1)
  large = demo.list_clips(seed=0, num_train=9, num_valid=4, num_test=4)
  by_id = {clip.clip_id: clip for clip in large.clips}
  for clip in small.clips:
    assert by_id[clip.clip_id] == clip
    np.testing.assert_array_equal(small.synthesize(clip), large.synthesize(by_id[clip.clip_id]))


def test_listing_shape_sizes_and_lengths():
  listing = demo.list_clips(num_train=40, num_valid=5, num_test=7, clip_seconds=2.0)
  assert listing.vocabulary == list(demo.CLASSES) and len(listing.vocabulary) == 6
  assert listing.label_type == "multi_label"
  splits = [clip.split for clip in listing.clips]
  assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (40, 5, 7)
  for clip, wave in zip(listing.clips, _audio(listing), strict=True):
    assert wave.dtype == np.float32 and np.abs(wave).max() <= 0.9 + 1e-6
    assert 1.5 * RATE - 1 <= len(wave) <= 3.0 * RATE + 1
    assert len(wave) == round(clip.duration * RATE)
    assert len(clip.labels) <= 3 and list(clip.labels) == sorted(set(clip.labels))
  assert demo.list_clips(num_train=0, num_valid=0, num_test=1).clips[0].split == "test"
  with pytest.raises(ValueError, match="sample_rate"):
    demo.list_clips(sample_rate=8000)


def _band_level(wave: np.ndarray, band: tuple[float, float], rate: int = RATE) -> float:
  """Mean power in `band` over the median power (dB), after whitening the pink background
  (power x f), so that the median is about the background's level."""
  n = scipy.fft.next_fast_len(len(wave), real=True)  # Zero-pad: prime lengths are slow.
  freqs = np.fft.rfftfreq(n, 1 / rate)
  power = np.abs(np.fft.rfft(wave, n)) ** 2 * np.maximum(freqs, 20.0)
  inside = (freqs >= band[0]) & (freqs <= band[1])
  return float(10 * np.log10(power[inside].mean() / np.median(power[freqs >= 50])))


def test_labels_match_the_energy_in_each_class_band():
  listing = demo.list_clips(seed=1, num_train=160, num_valid=0, num_test=0)
  waves = _audio(listing)
  for index, name in enumerate(demo.CLASSES):
    has = np.array([index in clip.labels for clip in listing.clips])
    level = np.array([_band_level(w, demo.CLASS_BANDS[name]) for w in waves])
    assert 10 < has.sum() < 150, name
    assert roc_auc_score(has, level) > 0.95, name


def test_events_are_visible_in_short_segments():
  """Labels are clip-level, but each event covers >= 40 % of its clip, so a 0.41-s segment
  (the demo config's input) taken in the middle of an event shows the class's band."""
  listing = demo.list_clips(seed=2, num_train=60, num_valid=0, num_test=0)
  segment = 6561
  louder = []
  for clip in listing.clips:
    wave = listing.synthesize(clip)
    _, events = demo.plan_clip(2, "train", int(clip.clip_id[-5:]), 2.0)
    for event in events:
      assert event.duration >= demo.MIN_EVENT_FRACTION * clip.duration - 1e-9
      center = int((event.start + event.duration / 2) * RATE)
      start = int(np.clip(center - segment // 2, 0, len(wave) - segment))
      band = demo.CLASS_BANDS[demo.CLASSES[event.label]]
      louder.append(_band_level(wave[start : start + segment], band) > 0)
  assert len(louder) > 40 and np.mean(louder) > 0.9
