"""Tests for samplecnn_jax/input_pipeline.py on tiny prepared stores written here.

Every clip's audio encodes where it came from: sample j of clip i is `(i + 1) * 128 + j`
(clips are shorter than 128 samples), so a batch row tells which clip and which positions
it holds, and labels, crops, segments and padding can be checked exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import grain
import numpy as np
import pytest

from samplecnn_jax import config_base, store
from samplecnn_jax import input_pipeline as ip
from samplecnn_jax.segments import segment_clip

INPUT_SIZE = 16
NUM_CLASSES = 5
# Shorter than, equal to, just over and several times the segment length.
TRAIN_LENGTHS = [5, 16, 17, 100, 33, 48, 9, 64, 31, 127, 20, 16, 80, 47, 12, 95, 50, 18, 70, 40]
VALID_LENGTHS = [8, 16, 30, 100, 47, 3, 127]  # 7 clips: uneven over 3 processes.
NOISE_VALUE = 16384  # Background noise recordings are constant 0.5.
ALONE = ip.ProcessSlice(0, 1)  # Process 0 of 1.


def _clip_audio(index: int, length: int) -> np.ndarray:
  return ((index + 1) * 128 + np.arange(length)).astype(np.int16)


def _clip_labels(index: int) -> list[int]:
  return sorted({index % NUM_CLASSES, (3 * index + 1) % NUM_CLASSES})


def _write_split(
    root: Path, split: str, lengths, shard_sizes, labels_fn=_clip_labels, audio_fn=_clip_audio
):
  shards, first = [], 0
  for number, size in enumerate(shard_sizes):
    name = f"{split}/{split}-{number:05d}{store.SHARD_SUFFIX}"
    clips = range(first, first + size)
    store.write_shard(
        root / name,
        (store.encode_clip(f"{split}_{i}", audio_fn(i, lengths[i]), labels_fn(i)) for i in clips),
    )
    shards.append(name)
    first += size
  np.save(root / split / store.CLIP_LENGTHS, np.asarray(lengths, np.int64))
  return {"num_clips": len(lengths), "num_samples": int(sum(lengths)), "shards": shards}


def write_tiny_store(root: Path, *, sample_rate: int = 16000, label_type: str = "multi_label"):
  """A store in the documented format: train (2 shards), valid, background_noise."""
  splits = {
      "train": _write_split(root, "train", TRAIN_LENGTHS, [12, 8]),
      "valid": _write_split(root, "valid", VALID_LENGTHS, [len(VALID_LENGTHS)]),
      ip.BACKGROUND_NOISE_SPLIT: _write_split(
          root, ip.BACKGROUND_NOISE_SPLIT, [40, 24], [2], labels_fn=lambda i: [],
          audio_fn=lambda i, n: np.full((n,), NOISE_VALUE, np.int16),
      ),
  }
  store.write_json(root / store.MANIFEST, {
      "format_version": store.FORMAT_VERSION,
      "vocabulary": [f"class{i}" for i in range(NUM_CLASSES)],
      "label_type": label_type,
      "sample_rate": sample_rate,
      "splits": splits,
  })
  return root


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> store.Store:
  return store.Store.open(write_tiny_store(tmp_path_factory.mktemp("store")))


def multi_hot(labels, num_classes: int) -> np.ndarray:
  """Float32 multi-hot (or one-hot) vector of `labels`."""
  vector = np.zeros((num_classes,), np.float32)
  vector[np.asarray(labels, dtype=np.int64)] = 1.0
  return vector


def tiny_config(**overrides):
  config = config_base.base_config()
  config.input_size = INPUT_SIZE
  config.num_classes = NUM_CLASSES
  config.label_type = "multi_label"
  config.sample_rate = 16000
  config.batch_size = 4
  config.eval_batch_size = 6
  config.eval_segments = 3
  config.prefetch_buffer_size = 2
  config.train_segments = "random"
  config.augment.time_shift_ms = 0.0
  config.augment.noise_prob = 0.0
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def decode_rows(audio: np.ndarray) -> np.ndarray:
  return np.rint(audio.astype(np.float64) * 32768).astype(np.int64)


def row_clip_and_positions(row: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
  """The clip a training row came from, the positions it holds, and where they sit."""
  values = decode_rows(row)
  where = np.flatnonzero(values)
  clips = values[where] // 128 - 1
  assert len(where) and np.all(clips == clips[0]), "a row mixes clips"
  return int(clips[0]), values[where] % 128, where


def take_rows(iterator, count: int, key: str = "audio") -> np.ndarray:
  rows = []
  while sum(len(r) for r in rows) < count:
    rows.append(next(iterator)[key])
  return np.concatenate(rows)[:count]


def stream_clips(iterator, count: int) -> list[int]:
  return [row_clip_and_positions(row)[0] for row in take_rows(iterator, count)]


# --- Training -------------------------------------------------------------------------------


def test_train_batches_are_crops_of_one_clip_with_its_labels(tiny_store):
  config = tiny_config()
  iterator = ip.create_train_iterator(config, tiny_store, seed=0, process=ALONE)
  for _ in range(12):
    batch = next(iterator)
    assert set(batch) == {"audio", "label"}
    assert batch["audio"].shape == (4, INPUT_SIZE) and batch["audio"].dtype == np.float32
    assert batch["label"].shape == (4, NUM_CLASSES) and batch["label"].dtype == np.float32
    assert np.abs(batch["audio"]).max() < 1.0
    for row, label in zip(batch["audio"], batch["label"], strict=True):
      clip, positions, where = row_clip_and_positions(row)
      length = TRAIN_LENGTHS[clip]
      np.testing.assert_array_equal(label, multi_hot(_clip_labels(clip), NUM_CLASSES))
      assert np.all(np.diff(positions) == 1) and np.all(np.diff(where) == 1)  # Contiguous.
      if length >= INPUT_SIZE:
        assert len(positions) == INPUT_SIZE and positions[-1] < length
      else:  # Whole clip, zero-padded around it.
        np.testing.assert_array_equal(positions, np.arange(length))


def test_random_crops_vary_between_visits(tiny_store):
  iterator = ip.create_train_iterator(tiny_config(), tiny_store, seed=0, process=ALONE)
  starts = {}
  for row in take_rows(iterator, 10 * len(TRAIN_LENGTHS)):
    clip, positions, where = row_clip_and_positions(row)
    starts.setdefault(clip, set()).add((int(positions[0]), int(where[0])))
  long_clip = TRAIN_LENGTHS.index(127)
  short_clip = TRAIN_LENGTHS.index(5)
  assert len(starts[long_clip]) > 3  # Different crop positions...
  assert len(starts[short_clip]) > 3  # ... and different padding offsets.


def test_all_mode_covers_every_segment_exactly_once_per_epoch(tiny_store):
  config = tiny_config(train_segments="all")
  expected = [(c, s) for c, n in enumerate(TRAIN_LENGTHS) for s in range(max(n // 16, 1))]
  assert len(expected) % config.batch_size == 0  # So take_rows drops no row between epochs.
  iterator = ip.create_train_iterator(config, tiny_store, seed=3, process=ALONE)
  for _ in range(2):  # Two epochs, each a permutation of all segments.
    seen = []
    for row in take_rows(iterator, len(expected)):
      clip, positions, _ = row_clip_and_positions(row)
      if TRAIN_LENGTHS[clip] >= INPUT_SIZE:
        assert positions[0] % INPUT_SIZE == 0 and len(positions) == INPUT_SIZE
      seen.append((clip, int(positions[0]) // INPUT_SIZE))
    assert sorted(seen) == expected


def test_all_mode_plan_without_clip_lengths_file(tmp_path):
  root = write_tiny_store(tmp_path)
  with_file = store.Store.open(root).clip_lengths("train")
  (root / "train" / store.CLIP_LENGTHS).unlink()
  np.testing.assert_array_equal(store.Store.open(root).clip_lengths("train"), with_file)
  np.testing.assert_array_equal(with_file, TRAIN_LENGTHS)


def test_shuffle_is_seeded_and_reshuffles_every_epoch(tiny_store):
  config = tiny_config()
  n = len(TRAIN_LENGTHS)

  def first_epochs(seed):
    it = ip.create_train_iterator(config, tiny_store, seed=seed, process=ALONE)
    return stream_clips(it, 2 * n)

  a, b, c = first_epochs(0), first_epochs(0), first_epochs(1)
  assert a == b
  assert a != c
  assert sorted(a[:n]) == sorted(a[n:]) == list(range(n))  # Each epoch visits every clip once.
  assert a[:n] != a[n:]  # ... in a new order.
  assert a[:n] != list(range(n))


def test_processes_read_disjoint_slices_of_the_global_stream(tiny_store):
  n = len(TRAIN_LENGTHS)
  single = take_rows(
      ip.create_train_iterator(tiny_config(), tiny_store, seed=5, process=ALONE),
      2 * n,
  )
  first_epoch = []
  for index in range(2):
    it = ip.create_train_iterator(tiny_config(), tiny_store, seed=5,
                                  process=ip.ProcessSlice(index, 2))
    first = next(it)
    assert first["audio"].shape == (2, INPUT_SIZE)  # Local batch = 4 // 2.
    rows = np.concatenate([first["audio"], take_rows(it, n - 2)])
    # Process p reads the p-th half of every global batch of 4: the processes' local batches
    # k, concatenated in process order, are the 1-process batch k row for row.
    halves = single.reshape(-1, 2, 2, INPUT_SIZE)[:, index].reshape(-1, INPUT_SIZE)
    np.testing.assert_array_equal(rows, halves[:n])
    first_epoch.append({row_clip_and_positions(r)[0] for r in rows[: n // 2]})
  assert first_epoch[0].isdisjoint(first_epoch[1])
  assert first_epoch[0] | first_epoch[1] == set(range(n))


def test_global_batch_must_split_evenly_over_processes(tiny_store):
  with pytest.raises(ValueError, match="batch_size=4 must be a positive multiple .* 3"):
    ip.create_train_iterator(tiny_config(), tiny_store, seed=0, process=ip.ProcessSlice(0, 3))
  with pytest.raises(ValueError, match="eval_batch_size=6 must be .* 4"):
    ip.create_eval_iterator(tiny_config(), tiny_store, "valid", process=ip.ProcessSlice(0, 4))


def test_standardisation_applies_mean_and_std(tiny_store):
  raw_config, std_config = tiny_config(), tiny_config(standardize=True, audio_mean=0.01,
                                                      audio_std=0.5)
  raw = next(ip.create_train_iterator(raw_config, tiny_store, seed=0, process=ALONE))
  std = next(ip.create_train_iterator(std_config, tiny_store, seed=0, process=ALONE))
  np.testing.assert_allclose(std["audio"], (raw["audio"] - 0.01) / 0.5, rtol=1e-6, atol=1e-7)
  raw_eval = next(iter(ip.create_eval_iterator(raw_config, tiny_store, "valid", process=ALONE)))
  std_eval = next(iter(ip.create_eval_iterator(std_config, tiny_store, "valid", process=ALONE)))
  np.testing.assert_allclose(std_eval["audio"], (raw_eval["audio"] - 0.01) / 0.5, rtol=1e-6,
                             atol=1e-7)
  with pytest.raises(ValueError, match="audio_std must be > 0"):
    ip.create_train_iterator(tiny_config(standardize=True, audio_std=0.0), tiny_store, seed=0,
                             process=ALONE)


def test_rms_normalisation_scales_every_segment_to_the_target_level(tiny_store):
  config = tiny_config(normalize_rms=0.1)
  batch = next(ip.create_train_iterator(config, tiny_store, seed=0, process=ALONE))["audio"]
  np.testing.assert_allclose(np.sqrt(np.mean(batch ** 2, axis=-1)), 0.1, rtol=1e-4)
  raw_eval = next(iter(ip.create_eval_iterator(tiny_config(), tiny_store, "valid", process=ALONE)))
  eval_batch = next(iter(ip.create_eval_iterator(config, tiny_store, "valid", process=ALONE)))
  level = np.sqrt(np.mean(raw_eval["audio"] ** 2, axis=-1, keepdims=True))
  np.testing.assert_allclose(eval_batch["audio"], raw_eval["audio"] * 0.1 / level, rtol=1e-4,
                             atol=1e-7)


def test_rms_normalisation_rejects_negative_levels(tiny_store):
  with pytest.raises(ValueError, match="normalize_rms must be >= 0"):
    ip.create_train_iterator(tiny_config(normalize_rms=-1.0), tiny_store, seed=0, process=ALONE)


def test_time_shift_moves_the_crop_with_zero_fill_deterministically(tiny_store):
  shift_ms = 8 * 1000 / 16000  # 8 samples.
  clean = take_rows(ip.create_train_iterator(tiny_config(), tiny_store, seed=2, process=ALONE), 40)
  config = tiny_config(**{"augment.time_shift_ms": shift_ms})
  shifted = take_rows(ip.create_train_iterator(config, tiny_store, seed=2, process=ALONE), 40)
  again = take_rows(ip.create_train_iterator(config, tiny_store, seed=2, process=ALONE), 40)
  np.testing.assert_array_equal(shifted, again)
  shifts = []
  for before, after in zip(clean, shifted, strict=True):
    matches = [k for k in range(-8, 9) if np.array_equal(after, _shift(before, k))]
    assert matches, "an augmented row is not a zero-filled shift of the clean crop"
    shifts.append(matches[0])
  assert len(set(shifts)) > 5


def test_time_shift_longer_than_the_segment_gives_zero_fill_not_an_error(tiny_store):
  """Speech Commands' 100-ms shift is 1,600 samples: more than a short segment holds."""
  shift_ms = 4 * INPUT_SIZE * 1000 / 16000
  config = tiny_config(**{"augment.time_shift_ms": shift_ms})
  rows = take_rows(ip.create_train_iterator(config, tiny_store, seed=2, process=ALONE), 40)
  assert rows.shape == (40, INPUT_SIZE)
  assert (np.abs(rows).sum(axis=1) == 0).sum() > 10, "most shifts push the whole crop out"


def _shift(row: np.ndarray, k: int) -> np.ndarray:
  out = np.zeros_like(row)
  if k >= 0:
    out[k:] = row[: len(row) - k]
  else:
    out[:k] = row[-k:]
  return out


def test_background_noise_is_mixed_at_random_volume_and_clipped(tiny_store):
  clean = take_rows(ip.create_train_iterator(tiny_config(), tiny_store, seed=4, process=ALONE), 40)
  config = tiny_config(**{"augment.noise_prob": 0.5, "augment.noise_volume": 0.1})
  noisy = take_rows(ip.create_train_iterator(config, tiny_store, seed=4, process=ALONE), 40)
  again = take_rows(ip.create_train_iterator(config, tiny_store, seed=4, process=ALONE), 40)
  np.testing.assert_array_equal(noisy, again)
  added = (noisy - clean).astype(np.float64)
  # Constant 0.5 noise at volume U(0, 0.1): every row gains one constant in [0, 0.05].
  np.testing.assert_allclose(added, added[:, :1] * np.ones_like(added), atol=1e-6)
  assert added.min() >= -1e-6 and added.max() <= 0.05 + 1e-6
  mixed = np.mean(added[:, 0] > 1e-4)
  assert 0.2 < mixed < 0.8  # About noise_prob of the rows.
  loud = tiny_config(**{"augment.noise_prob": 1.0, "augment.noise_volume": 40.0})
  rows = take_rows(ip.create_train_iterator(loud, tiny_store, seed=4, process=ALONE), 40)
  assert rows.max() == 1.0 and rows.min() >= -1.0


def test_noise_augmentation_needs_a_background_noise_split(tmp_path):
  root = write_tiny_store(tmp_path)
  manifest = store.Manifest.read(root)
  del manifest.splits[ip.BACKGROUND_NOISE_SPLIT]
  manifest.write(root)
  config = tiny_config(**{"augment.noise_prob": 0.8})
  with pytest.raises(ValueError, match="'background_noise' is not in"):
    ip.create_train_iterator(config, store.Store.open(root), seed=0, process=ALONE)


def test_iterator_state_resumes_the_same_batches(tiny_store):
  for mode in ("random", "all"):
    config = tiny_config(train_segments=mode, **{"augment.time_shift_ms": 0.5})
    iterator = ip.create_train_iterator(config, tiny_store, seed=7, process=ALONE)
    for _ in range(3):
      next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(5)]
    restored = ip.create_train_iterator(config, tiny_store, seed=7, process=ALONE)
    restored.set_state(state)
    for want, got in zip(expected, (next(restored) for _ in range(5)), strict=True):
      np.testing.assert_array_equal(want["audio"], got["audio"])
      np.testing.assert_array_equal(want["label"], got["label"])
    # The iterator reads the random-access batches in order.
    batches = ip.train_batches(config, tiny_store, seed=7, process=ALONE)
    np.testing.assert_array_equal(batches[3]["audio"], expected[0]["audio"])


def test_worker_iterator_state_round_trips_through_orbax_into_any_worker_count(tiny_store,
                                                                              tmp_path):
  import orbax.checkpoint as ocp

  config = tiny_config(num_workers=1)
  iterator = ip.create_train_iterator(config, tiny_store, seed=9, process=ALONE)
  try:
    for _ in range(4):
      next(iterator)
    assert iterator.get_state() == {"next_batch": 4}
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
      manager.save(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
      manager.wait_until_finished()
      expected = [next(iterator)["audio"] for _ in range(4)]
      # Back to the saved state in the worker iterator itself...
      iterator.set_state({"next_batch": 4})
      for want in expected:
        np.testing.assert_array_equal(next(iterator)["audio"], want)
      # ... and in a new in-process iterator restored by Orbax.
      restored = ip.create_train_iterator(tiny_config(), tiny_store, seed=9, process=ALONE)
      manager.restore(0, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(restored)))
  finally:
    iterator.close()
  for want in expected:
    np.testing.assert_array_equal(next(restored)["audio"], want)


# --- Evaluation -----------------------------------------------------------------------------


def test_eval_batches_hold_every_segment_once_with_masks_on_every_process(tiny_store):
  config = tiny_config()
  seen = {}
  counts = []
  for index in range(3):
    batches = ip.create_eval_iterator(config, tiny_store, "valid", ip.ProcessSlice(index, 3))
    listed = list(batches)
    counts.append(len(listed))
    assert len(listed) == len(batches) == ip.num_eval_batches(config, tiny_store, "valid",
                                                              ip.ProcessSlice(0, 3))
    for batch in listed:
      assert batch["audio"].shape == (2, INPUT_SIZE) and batch["audio"].dtype == np.float32
      assert batch["label"].shape == (2, NUM_CLASSES)
      assert batch["clip_index"].dtype == np.int32 and batch["mask"].dtype == np.bool_
      for row, label, clip, valid in zip(batch["audio"], batch["label"], batch["clip_index"],
                                         batch["mask"], strict=True):
        if not valid:
          assert clip == -1 and not row.any() and not label.any()
          continue
        np.testing.assert_array_equal(label, multi_hot(_clip_labels(clip), NUM_CLASSES))
        seen.setdefault(int(clip), []).append(decode_rows(row))
  assert len(set(counts)) == 1  # Same number of batches everywhere.
  # Clips 0-1, 2-3 and 4-6: 6, 6 and 9 segments in batches of 2 -> 5 batches each.
  assert counts[0] == 5
  assert sorted(seen) == list(range(len(VALID_LENGTHS)))
  for clip, rows in seen.items():
    expected = segment_clip(_clip_audio(clip, VALID_LENGTHS[clip]), INPUT_SIZE, 3)
    np.testing.assert_array_equal(np.stack(rows), expected)


def test_eval_batches_are_reiterable_and_single_process_is_complete(tiny_store):
  batches = ip.create_eval_iterator(tiny_config(eval_batch_size=4), tiny_store, "valid",
                                    process=ALONE)
  first, second = list(batches), list(batches)
  assert len(first) == len(batches) == 6  # 7 clips * 3 segments = 21 rows -> 6 batches of 4.
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a["audio"], b["audio"])
  clip_index = np.concatenate([b["clip_index"] for b in first])
  mask = np.concatenate([b["mask"] for b in first])
  np.testing.assert_array_equal(clip_index[mask], np.repeat(np.arange(7), 3))
  assert mask.sum() == 21 and not mask[21:].any()


def test_eval_with_more_processes_than_clips_pads_whole_batches(tiny_store):
  config = tiny_config(eval_batch_size=8)  # Local batch 1 on 8 processes; 7 clips.
  per_process = [
      list(ip.create_eval_iterator(config, tiny_store, "valid", process=ip.ProcessSlice(p, 8)))
      for p in range(8)
  ]
  assert {len(batches) for batches in per_process} == {3}  # At most 1 clip * 3 segments.
  assert not any(b["mask"].any() for b in per_process[0])  # Process 0 has no clip.
  indices = [int(b["clip_index"][0]) for batches in per_process for b in batches if b["mask"][0]]
  assert sorted(indices) == sorted(np.repeat(np.arange(7), 3).tolist())


def test_clip_labels_match_the_records(tiny_store):
  clip_ids, labels = tiny_store.clip_labels("valid", NUM_CLASSES)
  assert clip_ids == [f"valid_{i}" for i in range(len(VALID_LENGTHS))]
  assert labels.shape == (len(VALID_LENGTHS), NUM_CLASSES) and labels.dtype == np.float32
  for i, row in enumerate(labels):
    np.testing.assert_array_equal(row, multi_hot(_clip_labels(i), NUM_CLASSES))


# --- Store checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 7, "5 classes in its vocabulary but config.num_classes is 7. "
                       "Set --config.num_classes=5"),
    ("label_type", "multi_class", "label_type 'multi_label' but config.label_type is "
                                  "'multi_class'. Set --config.label_type=multi_label"),
    ("sample_rate", 22050, "audio at 16000 Hz but config.sample_rate is 22050. "
                           "Set --config.sample_rate=16000"),
])
def test_store_config_mismatch_is_explained(tiny_store, field, value, message):
  config = tiny_config(**{field: value})
  for create in (
      lambda: ip.create_train_iterator(config, tiny_store, seed=0, process=ALONE),
      lambda: ip.create_eval_iterator(config, tiny_store, "valid", process=ALONE),
  ):
    with pytest.raises(ValueError, match=message):
      create()


def test_unknown_train_segment_mode_and_split_are_explained(tiny_store):
  with pytest.raises(ValueError, match="train_segments must be one of"):
    ip.create_train_iterator(tiny_config(train_segments="every"), tiny_store, seed=0,
                             process=ALONE)
  with pytest.raises(ValueError, match="Split 'test' is not in .* background_noise, train, valid"):
    ip.create_eval_iterator(tiny_config(), tiny_store, "test", process=ALONE)


def test_data_dir_defaults_to_prepared_dataset():
  config = tiny_config(dataset="mtat", data_dir="")
  assert ip.data_dir_for(config) == "prepared/mtat"
  config.data_dir = "/data/mtat16k"
  assert ip.data_dir_for(config) == "/data/mtat16k"


def test_default_process_slice_comes_from_jax(tiny_store):
  batch = next(ip.create_train_iterator(tiny_config(), tiny_store, seed=0))
  assert batch["audio"].shape == (4, INPUT_SIZE)  # One process in tests: the whole batch.


def test_an_open_store_pickles_and_never_rereads_its_manifest(tiny_store, monkeypatch):
  clone = pickle.loads(pickle.dumps(tiny_store))
  assert clone.path == tiny_store.path and clone.manifest == tiny_store.manifest
  reads = []
  real = store.Manifest.read
  monkeypatch.setattr(store.Manifest, "read", lambda path: reads.append(path) or real(path))
  config = tiny_config(train_segments="all")
  next(ip.create_train_iterator(config, clone, seed=0, process=ALONE))
  list(ip.create_eval_iterator(config, clone, "valid", process=ALONE))
  clone.clip_labels("valid", NUM_CLASSES)
  pickle.loads(pickle.dumps(clone.clips("train")))[0]
  assert reads == []
  store.ClipSource(tiny_store.path, "valid")  # Opened from a path, it reads the manifest.
  assert reads == [tiny_store.path]


def test_store_checks_a_config_without_reading_files(tiny_store):
  tiny_store.check_matches(tiny_config())
  with pytest.raises(ValueError, match="config.num_classes is 7"):
    tiny_store.check_matches(tiny_config(num_classes=7))


# --- Small-data augmentations -----------------------------------------------------------------


def _rows(config, tiny_store, count=24, key="audio", seed=3):
  return take_rows(ip.create_train_iterator(config, tiny_store, seed=seed, process=ALONE), count, key)


def test_waveform_augmentations_are_off_by_default_and_leave_batches_unchanged(tiny_store):
  config = tiny_config()
  assert not ip.WaveformAugment.from_config(config).active
  assert config.augment.mixup_alpha == 0
  plain = _rows(config, tiny_store)
  # Explicitly zeroed fields give the same stream: the defaults really are "off".
  zeroed = tiny_config(**{"augment.gain_db": 0.0, "augment.polarity_prob": 0.0,
                          "augment.time_mask_prob": 0.0, "augment.mixup_alpha": 0.0})
  np.testing.assert_array_equal(plain, _rows(zeroed, tiny_store))
  for row in plain:
    row_clip_and_positions(row)  # Still exact, unmixed crops of one clip.


def test_gain_stays_in_its_db_range_and_is_deterministic_per_seed(tiny_store):
  plain = _rows(tiny_config(), tiny_store, 40)
  config = tiny_config(**{"augment.gain_db": 6.0})
  gained = _rows(config, tiny_store, 40)
  assert gained.shape == plain.shape and gained.dtype == np.float32
  np.testing.assert_array_equal(gained, _rows(config, tiny_store, 40))
  assert not np.array_equal(gained, _rows(config, tiny_store, 40, seed=4))
  ratios = []
  for before, after in zip(plain, gained, strict=True):
    nz = np.abs(before) > 0
    ratio = after[nz] / before[nz]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # One gain per clip.
    ratios.append(ratio[0])
  db = 20 * np.log10(np.asarray(ratios))
  assert db.min() >= -6.0 - 1e-4 and db.max() <= 6.0 + 1e-4
  assert db.max() - db.min() > 3.0  # The gains really vary.


def test_polarity_inversion_flips_some_rows_exactly(tiny_store):
  plain = _rows(tiny_config(), tiny_store, 40)
  flipped = _rows(tiny_config(**{"augment.polarity_prob": 0.5}), tiny_store, 40)
  same = [np.array_equal(a, b) for a, b in zip(plain, flipped, strict=True)]
  negated = [np.array_equal(-a, b) for a, b in zip(plain, flipped, strict=True)]
  assert all(s or n for s, n in zip(same, negated, strict=True))
  assert 5 < sum(negated) < 35


def test_time_mask_zeroes_one_span_of_bounded_length():
  augment = ip.WaveformAugment(time_mask_prob=1.0, time_mask_fraction=0.25)
  rng = np.random.default_rng(0)
  widths = []
  for _ in range(50):
    audio = np.full((64,), 0.5, np.float32)
    out = augment(audio, rng)
    zeros = np.flatnonzero(out == 0)
    assert out.shape == (64,) and np.all(out[out != 0] == 0.5)
    if len(zeros):
      assert zeros[-1] - zeros[0] + 1 == len(zeros)  # One contiguous span.
    widths.append(len(zeros))
    assert audio.min() == 0.5  # The input is not modified in place.
  assert max(widths) <= 16 and len(set(widths)) > 3


def test_mixup_keeps_label_sums_and_mixes_audio_with_the_same_weights(tiny_store):
  rng = np.random.default_rng(0)
  audio = rng.normal(size=(8, 16)).astype(np.float32)
  one_hot = np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=8)]
  mixed_audio, mixed_label = ip.mixup(audio, one_hot, 0.4, np.random.default_rng(1))
  np.testing.assert_allclose(mixed_label.sum(axis=1), 1.0, rtol=1e-6)
  assert mixed_audio.shape == audio.shape and mixed_label.max() >= 0.5
  multi_hot_labels = (rng.random((8, 5)) > 0.5).astype(np.float32)
  _, soft = ip.mixup(audio, multi_hot_labels, 0.4, np.random.default_rng(1))
  assert soft.min() >= 0 and soft.max() <= 1  # Soft multi-label targets for BCE.
  # Through the pipeline: deterministic per seed, rows are no longer single clips.
  config = tiny_config(**{"augment.mixup_alpha": 0.4})
  labels = _rows(config, tiny_store, 24, key="label")
  np.testing.assert_array_equal(labels, _rows(config, tiny_store, 24, key="label"))
  plain = _rows(tiny_config(), tiny_store, 24, key="label")
  assert not np.array_equal(labels, plain)
  np.testing.assert_allclose(labels.sum(axis=1) > 0, True)


def test_union_mixup_labels_a_row_with_every_event_of_both_clips(tiny_store):
  rng = np.random.default_rng(0)
  audio = rng.normal(size=(8, 16)).astype(np.float32)
  labels = (rng.random((8, 5)) > 0.6).astype(np.float32)
  mixed_audio, union = ip.mixup(audio, labels, 0.4, np.random.default_rng(1), union=True)
  weighted_audio, weighted = ip.mixup(audio, labels, 0.4, np.random.default_rng(1))
  np.testing.assert_array_equal(mixed_audio, weighted_audio)  # The audio mixes the same way.
  assert set(np.unique(union)) <= {0.0, 1.0} and np.all(union >= labels)
  np.testing.assert_array_equal(union, weighted > 0)  # Every event heard at any weight.
  config = tiny_config(**{"augment.mixup_alpha": 0.4, "augment.mixup_labels": "union"})
  rows = _rows(config, tiny_store, 24, key="label")
  assert set(np.unique(rows)) == {0.0, 1.0}
  assert rows.sum() > _rows(tiny_config(), tiny_store, 24, key="label").sum()  # Events added.


def test_union_mixup_is_refused_for_single_label_runs():
  config = tiny_config(**{"augment.mixup_alpha": 0.2, "augment.mixup_labels": "union"})
  config.label_type = "multi_class"
  with pytest.raises(ValueError, match="only a multi_label run"):
    config_base.validate_config(config)
  config.augment.mixup_labels = "max"
  with pytest.raises(ValueError, match="choose one of: mix, union"):
    config_base.validate_config(config)


def test_eval_sample_takes_one_seeded_clip_from_each_block_of_the_split():
  config = tiny_config(eval_batch_size=8, eval_segments=2)  # 2 batches = 8 clips.
  sample = ip.eval_sample(120, 2, config)
  assert len(sample) == 8 and np.all(np.diff(sample) > 0)
  np.testing.assert_array_equal(sample // 15, np.arange(8))  # One per block of 15 clips.
  np.testing.assert_array_equal(sample, ip.eval_sample(120, 2, config))
  config.seed = 1
  assert not np.array_equal(sample, ip.eval_sample(120, 2, config))
  assert ip.eval_sample(120, 0, config) is None and ip.eval_sample(6, 2, config) is None


def test_eval_iterator_over_a_clip_sample_yields_only_those_clips(tiny_store):
  config = tiny_config()
  clips = np.array([0, 2])
  batches = ip.create_eval_iterator(config, tiny_store, "valid", process=ALONE, clips=clips)
  seen = np.concatenate([b["clip_index"][b["mask"]] for b in batches])
  assert sorted(set(seen.tolist())) == [0, 2]
  assert len(seen) == 2 * config.eval_segments


def test_random_equalizer_keeps_length_and_stays_within_its_gain_range():
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 0.1, 16000).astype(np.float32)
  out = ip.random_equalizer(noise, 6.0, np.random.default_rng(1))
  assert out.shape == noise.shape and out.dtype == np.float32
  ratio = np.abs(np.fft.rfft(out)) / np.maximum(np.abs(np.fft.rfft(noise)), 1e-9)
  db = 20 * np.log10(ratio[1:])
  assert db.min() >= -6.0 - 1e-3 and db.max() <= 6.0 + 1e-3
  assert db.max() - db.min() > 2.0  # A real colouring, not a constant gain.
  np.testing.assert_array_equal(out, ip.random_equalizer(noise, 6.0, np.random.default_rng(1)))


def test_speed_perturbation_resamples_a_tone_within_its_range(tiny_store):
  rng = np.random.default_rng(0)
  t = np.arange(48000) / 16000
  tone = (0.5 * np.sin(2 * np.pi * 500 * t) * 32767).astype(np.int16)
  peaks = []
  for _ in range(30):
    crop = ip._speed_crop(tone, None, 8000, 0.2, rng)
    assert crop.shape == (8000,) and crop.dtype == np.float32
    peaks.append(np.argmax(np.abs(np.fft.rfft(crop))) * 16000 / 8000)  # Hz, 2-Hz bins.
  assert 0.8 * 500 - 4 <= min(peaks) and max(peaks) <= 1.2 * 500 + 4
  assert max(peaks) - min(peaks) > 60  # The speed really varies.
  config = tiny_config(**{"augment.speed_range": 0.1})
  rows = _rows(config, tiny_store, 8)
  np.testing.assert_array_equal(rows, _rows(config, tiny_store, 8))  # Seeded.
  assert not np.array_equal(rows, _rows(tiny_config(), tiny_store, 8))


def test_rms_crops_land_on_the_sound_and_stay_inside_the_clip():
  rng = np.random.default_rng(0)
  clip = np.zeros(80000, np.int16)
  clip[40000:56000] = (rng.normal(size=16000) * 3000).astype(np.int16)  # 1 s of sound in 5.
  starts = np.array([ip.rms_crop_start(clip, 16000, rng) for _ in range(500)])
  assert np.all((starts > 24000) & (starts < 56000))  # Every crop overlaps the sound...
  uniform = rng.integers(0, 64001, 500)
  assert np.mean((uniform > 24000) & (uniform < 56000)) < 0.6  # ... which uniform ones do not.
  noise = (rng.normal(size=16500) * 3000).astype(np.int16)  # Start range [0, 500].
  starts = [ip.rms_crop_start(noise, 16000, rng) for _ in range(2000)]
  assert min(starts) == 0 and max(starts) == 500 and len(set(starts)) > 300
  silent = [ip.rms_crop_start(np.zeros(20000, np.int16), 16000, rng) for _ in range(200)]
  assert 0 <= min(silent) and max(silent) <= 4000 and len(set(silent)) > 50  # Uniform.


def test_rms_crop_weighting_is_seeded_and_changes_the_crops(tiny_store):
  config = tiny_config(**{"augment.crop_weighting": "rms"})
  rows = _rows(config, tiny_store, 8)
  np.testing.assert_array_equal(rows, _rows(config, tiny_store, 8))
  assert not np.array_equal(rows, _rows(tiny_config(), tiny_store, 8))
  speed = tiny_config(**{"augment.crop_weighting": "rms", "augment.speed_range": 0.1})
  np.testing.assert_array_equal(_rows(speed, tiny_store, 8), _rows(speed, tiny_store, 8))
