"""Tests of the MagnaTagATune listing, on fixture annotations and the real published split lists."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import pytest

from samplecnn_jax.datasets import mtat
from samplecnn_jax.datasets.common import LayoutError

TAGS = ["guitar", "no vocals", "piano", "rock", "slow"]


def write_annotations(path: Path, tags: list[str], rows: list[list[str]]) -> None:
  """Writes annotations_final.csv as distributed: tab-separated, every field quoted, CRLF."""
  lines = [["clip_id", *tags, "mp3_path"], *rows]
  path.write_bytes(
      "".join("\t".join(f'"{field}"' for field in line) + "\r\n" for line in lines).encode()
  )


def row(clip_id: int, flags: str, mp3_path: str) -> list[str]:
  return [str(clip_id), *flags, mp3_path]


def make_mp3s(src: Path, *mp3_paths: str) -> None:
  """Empty stand-ins: the listing only checks that files exist, it does not decode them."""
  for mp3_path in mp3_paths:
    (src / mp3_path).parent.mkdir(parents=True, exist_ok=True)
    (src / mp3_path).write_bytes(b"")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
  # Counts over the parsed rows: guitar 4, no vocals 4, piano 4, rock 1, slow 3, so the top 3
  # are guitar, no vocals, piano: a three-way tie, kept in column order.
  write_annotations(
      tmp_path / "annotations_final.csv",
      TAGS,
      [
          row(1, "11001", "0/a-1-0-29.mp3"),
          row(2, "01100", "5/b-1-0-29.mp3"),
          row(3, "10100", "c/c-1-0-29.mp3"),
          row(4, "01101", "d/d-1-0-29.mp3"),
          row(5, "00011", "f/e-1-0-29.mp3"),  # only rock + slow: no top-3 tag, dropped
          row(6, "11100", "e/missing-0-29.mp3"),  # listed but not on disk: skipped
          ["7", "1", "0", "e/short-row.mp3"],  # wrong column count: skipped
          row(8, "0x100", "e/bad-flag.mp3"),  # not 0/1: skipped
          row(9, "10000", "0/a-1-29-58.mp3"),
      ],
  )
  make_mp3s(tmp_path, "0/a-1-0-29.mp3", "5/b-1-0-29.mp3", "c/c-1-0-29.mp3", "d/d-1-0-29.mp3")
  make_mp3s(tmp_path, "f/e-1-0-29.mp3", "0/a-1-29-58.mp3")
  return tmp_path


def test_top_tag_columns_by_count_then_column():
  assert mtat.top_tag_columns([3, 5, 5, 1, 3], 3) == [1, 2, 0]
  assert mtat.top_tag_columns([0, 0, 2], 5) == [2, 0, 1]


def test_lists_folder_split_with_top_tags(raw: Path):
  listing = mtat.list_clips(raw, num_tags=3)
  assert listing.vocabulary == ["guitar", "no vocals", "piano"]
  assert listing.label_type == "multi_label"
  clips = {clip.clip_id: clip for clip in listing.clips}
  assert {clip_id: (clip.split, clip.labels) for clip_id, clip in clips.items()} == {
      "0/a-1-0-29.mp3": ("train", (0, 1)),
      "5/b-1-0-29.mp3": ("train", (1, 2)),
      "c/c-1-0-29.mp3": ("valid", (0, 2)),
      "d/d-1-0-29.mp3": ("test", (1, 2)),
      "0/a-1-29-58.mp3": ("train", (0,)),
  }
  assert clips["c/c-1-0-29.mp3"].path == str(raw / "c" / "c-1-0-29.mp3")
  assert clips["c/c-1-0-29.mp3"].source == "c/c-1-0-29.mp3"
  reasons = {skip["source"]: skip["reason"] for skip in listing.skipped}
  assert reasons["e/missing-0-29.mp3"] == "in annotations_final.csv, file missing"
  assert reasons["annotations_final.csv:8"].startswith("4 columns")
  assert reasons["annotations_final.csv:9"] == "tag columns must be 0 or 1"
  assert len(reasons) == 3
  assert listing.extra["clips_without_top_tags"] == 1
  assert listing.extra["tag_counts"] == {"guitar": 4, "no vocals": 4, "piano": 4}
  assert mtat.list_clips(raw, num_tags=4).vocabulary == ["guitar", "no vocals", "piano", "slow"]
  assert listing.extra["split_rule"] == "folders: train 0123456789ab, valid c, test def"


def test_folder_options_and_gzipped_annotations(raw: Path):
  gz = raw / "annotations_final.csv.gz"
  gz.write_bytes(gzip.compress((raw / "annotations_final.csv").read_bytes()))
  (raw / "annotations_final.csv").unlink()
  listing = mtat.list_clips(
      raw, num_tags=3, train_folders="05", valid_folders="cd", test_folders=""
  )
  splits = {clip.clip_id: clip.split for clip in listing.clips}
  assert splits == {
      "0/a-1-0-29.mp3": "train",
      "5/b-1-0-29.mp3": "train",
      "c/c-1-0-29.mp3": "valid",
      "d/d-1-0-29.mp3": "valid",
      "0/a-1-29-58.mp3": "train",
  }
  assert listing.extra["clips_in_no_split"] == 2  # e and f folders: in no split now.
  with pytest.raises(ValueError, match="at most one split"):
    mtat.list_clips(raw, train_folders="0c", valid_folders="c")
  with pytest.raises(ValueError, match="hex digits"):
    mtat.list_clips(raw, test_folders="xyz")


def test_layout_errors_name_what_is_missing(tmp_path: Path):
  with pytest.raises(LayoutError, match="annotations_final.csv"):
    mtat.list_clips(tmp_path)
  (tmp_path / "annotations_final.csv").write_text('"clip_id"\t"guitar"\t"mp3_path"\r\n')
  with pytest.raises(LayoutError, match="mp3 folders 0..f"):
    mtat.list_clips(tmp_path)
  (tmp_path / "0").mkdir()
  (tmp_path / "annotations_final.csv").write_text("id,guitar,path\n")
  with pytest.raises(LayoutError, match="header"):
    mtat.list_clips(tmp_path)
  with pytest.raises(LayoutError, match="train_list_pub.cP"):
    write_annotations(tmp_path / "annotations_final.csv", TAGS, [])
    mtat.list_clips(tmp_path, split_lists=str(tmp_path))


def write_split_lists(folder: Path, lists: dict[str, list[str]]) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for split, name in mtat.SPLIT_LIST_FILES.items():
    (folder / name).write_bytes(pickle.dumps(lists.get(split, []), protocol=2))


def test_split_lists_decide_the_split(raw: Path):
  lists = {
      "train": ["0/a-1-0-29.npy", "5/b-1-0-29.npy"],
      "valid": ["c/c-1-0-29.npy", "e/not-annotated-0-29.npy"],
      "test": ["f/e-1-0-29.npy"],
  }
  write_split_lists(raw / "lists", lists)
  listing = mtat.list_clips(raw, num_tags=3, split_lists=str(raw / "lists"))
  assert {clip.clip_id: clip.split for clip in listing.clips} == {
      "0/a-1-0-29.mp3": "train",
      "5/b-1-0-29.mp3": "train",
      "c/c-1-0-29.mp3": "valid",
  }
  reasons = {skip["source"]: skip["reason"] for skip in listing.skipped}
  assert reasons["e/not-annotated-0-29.mp3"] == "in the valid list, not in annotations"
  assert reasons["f/e-1-0-29.mp3"] == "in the test list but has no top tag"
  assert listing.extra["clips_in_no_split"] == 3  # d/d, 0/a-1-29-58 and e/missing: no list.


def test_real_published_split_lists(shared_data: Path):
  """The lists of jongpillee/music_dataset_split: 15,244 / 1,529 / 4,332, by folder 0-b/c/d-f."""
  split_of = mtat.read_split_lists(shared_data / "metadata" / "mtat" / "jongpillee_MTAT_split")
  counts = {split: list(split_of.values()).count(split) for split in ("train", "valid", "test")}
  assert counts == {"train": 15244, "valid": 1529, "test": 4332}
  folders = {"train": mtat.TRAIN_FOLDERS, "valid": mtat.VALID_FOLDERS, "test": mtat.TEST_FOLDERS}
  folder_rule = {folder: split for split, digits in folders.items() for folder in digits}
  assert all(path.endswith(".mp3") for path in split_of)
  assert all(folder_rule[path.split("/")[0]] == split for path, split in split_of.items())


def test_prepare_end_to_end(raw: Path):
  """Real mp3 decoding through `prepare`; a corrupt mp3 is reported, and when it was the
  only clip of a split the run fails (issue 10 item 8) until it is fixed."""
  import json

  import numpy as np
  import pytest
  import soundfile

  from samplecnn_jax import prepare

  tone = 0.1 * np.sin(np.arange(8000, dtype=np.float32) / 5)
  for mp3_path in ("0/a-1-0-29.mp3", "5/b-1-0-29.mp3", "c/c-1-0-29.mp3", "0/a-1-29-58.mp3"):
    soundfile.write(raw / mp3_path, tone, 16000, format="MP3")
  (raw / "d" / "d-1-0-29.mp3").write_bytes(b"not an mp3" * 100)
  with pytest.raises(prepare.UnusableStoreError, match="split 'test': none of its 1 clips"):
    prepare.prepare("mtat", raw, raw / "out", workers=1, progress=False, num_tags=3)
  report = json.loads((raw / "out" / "report.json").read_text())
  assert report["skipped_by_kind"] == {"corrupt": 1, "metadata": 3}
  assert report["counts"]["splits"]["test"] == {"listed": 1, "written": 0}

  soundfile.write(raw / "d" / "d-1-0-29.mp3", tone, 16000, format="MP3")  # The fix.
  manifest = prepare.prepare("mtat", raw, raw / "out", workers=1, progress=False, num_tags=3)
  assert {split: info.num_clips for split, info in manifest.splits.items()} == {
      "train": 3,
      "valid": 1,
      "test": 1,
  }
  assert manifest.vocabulary == ("guitar", "no vocals", "piano")
  assert manifest.extra["tag_counts"] == {"guitar": 4, "no vocals": 4, "piano": 4}
  assert manifest.skipped == 3  # The 3 metadata problems.
  lengths = np.load(raw / "out" / "train" / "clip_lengths.npy")
  assert lengths.tolist() == [8000, 8000, 8000]
