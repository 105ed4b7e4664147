"""Tests of the Speech Commands v0.01 listing, on the real 300-clip excerpt and on fixtures."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from samplecnn_jax.datasets import speech_commands as sc
from samplecnn_jax.datasets.common import LayoutError


def write_wav(path: Path, seconds: float = 0.01, rate: int = 16000) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, np.zeros(int(seconds * rate), np.int16), rate, subtype="PCM_16")


@pytest.fixture
def subset(shared_data: Path) -> Path:
  return shared_data / "speech_commands_v0.01_subset"


def split_counts(listing) -> dict[str, int]:
  return dict(collections.Counter(clip.split for clip in listing.clips))


def test_real_subset_follows_the_lists(subset: Path):
  listing = sc.list_clips(subset)
  validation = set((subset / "validation_list.txt").read_text().split())
  testing = set((subset / "testing_list.txt").read_text().split())
  words = [clip for clip in listing.clips if not clip.clip_id.startswith("_")]
  assert len(words) == 300 and len(validation) == 44 and len(testing) == 51
  for clip in words:
    listed = "valid" if clip.source in validation else "test" if clip.source in testing else None
    assert clip.split == (listed or "train"), clip
    assert listing.vocabulary[clip.labels[0]] == clip.source.split("/")[0]
    assert Path(clip.path).is_file() and clip.duration is None
  # Silence: ceil(10% of the word clips) per split: 205 -> 21, 44 -> 5, 51 -> 6.
  assert listing.extra["silence_clips"] == {"train": 21, "valid": 5, "test": 6}
  assert split_counts(listing) == {"train": 226, "valid": 49, "test": 57, "background_noise": 6}
  assert listing.skipped == []
  assert listing.label_type == "multi_class" and len(listing.vocabulary) == 31


def test_silence_crops_are_one_second_inside_the_recordings_and_seeded(subset: Path):
  listing = sc.list_clips(subset, seed=1)
  silence = [clip for clip in listing.clips if clip.clip_id.startswith("_silence_/")]
  assert len(silence) == 32 and len({clip.clip_id for clip in silence}) == 32
  for clip in silence:
    info = soundfile.info(clip.path)
    assert clip.duration == 1.0 and clip.source.startswith("_background_noise_/")
    assert 0 <= clip.offset and clip.offset + 1.0 <= info.frames / info.samplerate
    start = clip.offset * info.samplerate  # A whole sample, up to float rounding.
    assert abs(start - round(start)) < 1e-6
  assert len({clip.source for clip in silence}) > 1  # Crops come from several recordings.
  assert sc.list_clips(subset, seed=1).clips == listing.clips
  assert sc.list_clips(subset, seed=2).clips != listing.clips
  noise = [clip for clip in listing.clips if clip.split == "background_noise"]
  assert all(clip.labels == (0,) and clip.duration is None for clip in noise)
  assert sorted(Path(clip.path).name for clip in noise) == sorted(
      path.name for path in (subset / "_background_noise_").glob("*.wav")
  )


def test_eval_label_map_scores_twelve_classes(subset: Path):
  listing = sc.list_clips(subset, silence_percentage=0)
  assert listing.eval_vocabulary == (
      "_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off", "stop",
      "go",
  )  # fmt: skip
  label_map = listing.eval_label_map
  assert len(label_map) == 31
  for index, word in enumerate(sc.VOCABULARY):
    expected = word if word in listing.eval_vocabulary else "_unknown_"
    assert listing.eval_vocabulary[label_map[index]] == expected
  assert collections.Counter(label_map)[1] == 20  # The 20 non-command words.
  assert listing.extra["silence_clips"] == {"train": 0, "valid": 0, "test": 0}


def test_paper_rule_trains_on_the_testing_list(subset: Path):
  listing = sc.list_clips(subset, split_rule="paper")
  counts = split_counts(listing)
  assert counts == {"train": 256 + 26, "valid": 49, "background_noise": 6}
  assert listing.extra["test_source"] == "none"


def make_test_archive(root: Path) -> Path:
  write_wav(root / "_silence_" / "silence_0.wav")
  write_wav(root / "_unknown_" / "bed_0a1b2c3d_nohash_0.wav")
  write_wav(root / "_unknown_" / "zero_0a1b2c3d_nohash_1.wav")
  write_wav(root / "_unknown_" / "learn_0a1b2c3d_nohash_0.wav")  # A v0.02 word: not ours.
  write_wav(root / "yes" / "0a1b2c3d_nohash_0.wav")
  write_wav(root / "go" / "0a1b2c3d_nohash_0.wav")
  (root / "extra_folder").mkdir()
  return root


def test_official_test_archive_replaces_the_test_split(subset: Path, tmp_path: Path):
  archive = make_test_archive(tmp_path / "speech_commands_test_set_v0.01")
  listing = sc.list_clips(subset, test_src=str(archive))
  test = {clip.clip_id: listing.vocabulary[clip.labels[0]] for clip in listing.clips
          if clip.split == "test"}  # fmt: skip
  assert test == {
      "test_set/_silence_/silence_0.wav": "_silence_",
      "test_set/_unknown_/bed_0a1b2c3d_nohash_0.wav": "bed",
      "test_set/_unknown_/zero_0a1b2c3d_nohash_1.wav": "zero",
      "test_set/go/0a1b2c3d_nohash_0.wav": "go",
      "test_set/yes/0a1b2c3d_nohash_0.wav": "yes",
  }
  counts = split_counts(listing)
  assert counts["dev_test"] == 51 + 6 and counts["train"] == 226
  reasons = {skip["source"]: skip["reason"] for skip in listing.skipped}
  assert reasons == {
      "test_set/_unknown_/learn_0a1b2c3d_nohash_0.wav": "unknown-word clip of 'learn'",
      "test_set/extra_folder": "not a test archive folder",
  }
  paper = sc.list_clips(subset, split_rule="paper", test_src=str(archive))
  assert split_counts(paper)["test"] == 5 and "dev_test" not in split_counts(paper)


def test_test_archive_as_src_points_to_test_src(tmp_path: Path):
  with pytest.raises(LayoutError, match="--test_src"):
    sc.list_clips(make_test_archive(tmp_path / "test_archive"))
  root = make_training_archive(tmp_path / "train_archive")
  with pytest.raises(LayoutError, match="_unknown_"):
    sc.list_clips(root, test_src=str(root / "yes"))


def make_training_archive(root: Path) -> Path:
  for word in sc.WORDS:
    write_wav(root / word / "0a1b2c3d_nohash_0.wav")
  write_wav(root / "_background_noise_" / "white_noise.wav", seconds=1.5)
  (root / "_background_noise_" / "README.md").write_text("noise")
  (root / "validation_list.txt").write_text("yes/0a1b2c3d_nohash_0.wav\nno/gone_nohash_0.wav\n")
  (root / "testing_list.txt").write_text("go/0a1b2c3d_nohash_0.wav\n")
  return root


def test_fixture_archive_reports_missing_files_and_folders(tmp_path: Path):
  root = make_training_archive(tmp_path)
  (root / "backward").mkdir()  # A v0.02 word folder.
  listing = sc.list_clips(root)
  assert split_counts(listing) == {"train": 28 + 3, "valid": 1 + 1, "test": 1 + 1,
                                   "background_noise": 1}  # fmt: skip
  assert listing.skipped == [
      {"source": "no/gone_nohash_0.wav", "reason": "listed in validation_list.txt, file missing"},
      {"source": "backward/", "reason": "not a v0.01 word folder, not used"},
  ]
  crops = [clip for clip in listing.clips if clip.clip_id.startswith("_silence_/")]
  assert len(crops) == 5
  assert all(0 <= clip.offset <= 0.5 for clip in crops)


def test_layout_errors_name_what_is_missing(tmp_path: Path):
  root = make_training_archive(tmp_path)
  shutil.rmtree(root / "_background_noise_")
  with pytest.raises(LayoutError, match="--silence_percentage 0"):
    sc.list_clips(root)
  assert "background_noise" not in split_counts(sc.list_clips(root, silence_percentage=0))
  shutil.rmtree(root / "wow")
  (root / "testing_list.txt").unlink()
  with pytest.raises(LayoutError, match="missing testing_list.txt, wow/"):
    sc.list_clips(root)
  with pytest.raises(ValueError, match="--split_rule"):
    sc.list_clips(root, split_rule="kaggle")


def test_prepare_end_to_end(subset: Path, tmp_path: Path):
  """The real excerpt through `prepare`: silence crops become 1-s records, the label map
  reaches the manifest."""
  from samplecnn_jax import prepare, store

  manifest = prepare.prepare("speech_commands", subset, tmp_path / "out", workers=1, progress=False)
  counts = {split: info.num_clips for split, info in manifest.splits.items()}
  assert counts == {"train": 226, "valid": 49, "test": 57, "background_noise": 6}
  assert manifest.eval_label_map == sc.EVAL_LABEL_MAP and manifest.skipped == 0
  valid = store.ClipSource(tmp_path / "out", "valid")
  records = [valid[i] for i in range(len(valid))]
  silence = [r for r in records if r["clip_id"].startswith("_silence_/")]
  assert len(silence) == 5 and all(len(r["audio"]) == 16000 and r["audio"].any() for r in silence)
  assert all(r["labels"].tolist() == [0] for r in silence)
  words = [r for r in records if not r["clip_id"].startswith("_")]
  assert all(0 < len(r["audio"]) <= 16000 for r in words)
