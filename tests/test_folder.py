"""Tests for samplecnn_jax.datasets.folder: class-folder and CSV listings, splits, errors."""

from __future__ import annotations

from collections import Counter

import pytest
from absl import flags

from samplecnn_jax import datasets, prepare
from samplecnn_jax.datasets import folder
from samplecnn_jax.datasets.common import LayoutError


def _touch(root, *relative):
  """Listers never open files, so empty placeholders are enough here."""
  for rel in relative:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_class_folders_give_sorted_vocabulary_and_folder_labels(tmp_path):
  _touch(tmp_path, "dog/a.wav", "dog/deeper/b.FLAC", "cat/c.mp3", "cat/notes.txt", "bird/.hid.wav")
  _touch(tmp_path, ".cache/x.wav")  # Hidden folders are not classes.
  listing = folder.list_folder(tmp_path)
  assert listing.vocabulary == ["cat", "dog"]
  assert listing.label_type == "multi_class"
  labels = {clip.clip_id: listing.vocabulary[clip.labels[0]] for clip in listing.clips}
  assert labels == {"cat/c.mp3": "cat", "dog/a.wav": "dog", "dog/deeper/b.FLAC": "dog"}
  assert all(clip.path == str(tmp_path.resolve() / clip.source) for clip in listing.clips)
  assert listing.skipped == [{"source": "bird/", "reason": "no audio files"}]
  assert listing.extra == {"split_method": "hash", "valid_fraction": 0.1, "test_fraction": 0.1}


def test_hash_split_follows_fractions_and_is_stable(tmp_path):
  names = [f"c{i % 3}/{i:04d}.wav" for i in range(1500)]
  _touch(tmp_path, *names)
  listing = folder.list_folder(tmp_path, valid_fraction=0.2, test_fraction=0.1)
  counts = Counter(clip.split for clip in listing.clips)
  assert abs(counts["valid"] / 1500 - 0.2) < 0.04 and abs(counts["test"] / 1500 - 0.1) < 0.03
  # A file keeps its split when files are added, and the split is the same across runs.
  before = {clip.clip_id: clip.split for clip in listing.clips}
  _touch(tmp_path, *[f"c9/{i}.wav" for i in range(50)])
  grown = folder.list_folder(tmp_path, valid_fraction=0.2, test_fraction=0.1)
  after = {clip.clip_id: clip.split for clip in grown.clips}
  assert all(after[key] == split for key, split in before.items())
  with pytest.raises(ValueError, match="sum < 1"):
    folder.hash_split("x", 0.6, 0.5)


def test_split_folders_are_used_and_aliases_normalised(tmp_path):
  _touch(tmp_path, "train/a/1.wav", "train/b/2.wav", "val/a/3.wav", "test/c/4.wav")
  _touch(tmp_path, "train/loose.wav")
  listing = folder.list_folder(tmp_path)
  assert listing.vocabulary == ["a", "b", "c"]
  splits = {clip.clip_id: (clip.split, clip.labels) for clip in listing.clips}
  assert splits == {
      "train/a/1.wav": ("train", (0,)),
      "train/b/2.wav": ("train", (1,)),
      "val/a/3.wav": ("valid", (0,)),
      "test/c/4.wav": ("test", (2,)),
  }
  assert listing.skipped == [{"source": "train/loose.wav", "reason": "not inside a class folder"}]
  assert listing.extra == {"split_method": "folders"}


@pytest.mark.parametrize(
    "files, message",
    [
        ((), "found no audio files and no sub-folders"),
        (("a.wav", "b.wav"), "expected one sub-folder per class"),
        (("x/readme.txt",), "found no audio files"),
        (("train/a/1.wav", "dog/2.wav"), "mixes split folders"),
        (("valid/a/1.wav", "val/a/2.wav"), "two folders for the same split"),
    ],
)
def test_folder_layout_errors_say_what_is_wrong(tmp_path, files, message):
  _touch(tmp_path, *files)
  with pytest.raises(LayoutError, match=message):
    folder.list_folder(tmp_path)


def test_missing_src_is_a_layout_error(tmp_path):
  with pytest.raises(LayoutError, match="does not exist"):
    folder.list_folder(tmp_path / "nope")
  with pytest.raises(LayoutError, match="does not exist"):
    folder.list_csv(tmp_path / "nope.csv")


def _csv(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


def test_csv_multi_class_with_relative_and_absolute_paths(tmp_path):
  elsewhere = tmp_path / "elsewhere" / "z.wav"
  _touch(tmp_path, "data/audio/x.wav")
  csv_path = _csv(
      tmp_path / "data" / "labels.csv",
      f"Path,Label\naudio/x.wav,dog\n{elsewhere},cat\naudio/x.wav,dog\n,cat\nq.wav,\n",
  )
  listing = folder.list_csv(tmp_path / "data")  # The folder holding exactly one CSV.
  assert listing.label_type == "multi_class"
  assert listing.vocabulary == ["cat", "dog"]
  clips = {clip.clip_id: (clip.path, clip.labels) for clip in listing.clips}
  assert clips == {
      "audio/x.wav": (str(csv_path.parent / "audio/x.wav"), (1,)),
      str(elsewhere): (str(elsewhere), (0,)),
  }
  reasons = [entry["reason"] for entry in listing.skipped]
  assert reasons == ["duplicate of line 2", "empty path", "line 6 has no label"]
  assert listing.extra["csv"] == str(csv_path)


def test_csv_multi_label_detected_and_split_column(tmp_path):
  csv_path = _csv(
      tmp_path / "meta.csv",
      "path,label,split\n1.wav,car;horn,train\n2.wav,horn,validation\n3.wav,,test\n4.wav,car,\n",
  )
  listing = folder.list_csv(csv_path)
  assert listing.label_type == "multi_label"
  assert listing.vocabulary == ["car", "horn"]
  got = {clip.clip_id: (clip.split, clip.labels) for clip in listing.clips}
  assert got["1.wav"] == ("train", (0, 1))
  assert got["2.wav"] == ("valid", (1,))
  assert got["3.wav"] == ("test", ())  # No labels: an all-negative multi-label clip.
  assert got["4.wav"][0] == folder.hash_split("4.wav", 0.1, 0.1)
  assert listing.extra["split_method"] == "column+hash"
  one_label = _csv(tmp_path / "one.csv", "path,label\na.wav,x\n")
  forced = folder.list_csv(one_label, label_type="multi_label")
  assert forced.label_type == "multi_label"


@pytest.mark.parametrize(
    "files, kwargs, message",
    [
        ({"a.csv": "path,label\nx.wav,a;b\n"}, {"label_type": "multi_class"}, "line 2 has 2"),
        ({"a.csv": "file,class\nx.wav,a\n"}, {}, "needs a header row"),
        ({"a.csv": "path,label\n"}, {}, "no rows"),
        ({"a.csv": "path,label\nx.wav,a\n", "b.csv": "path,label\n"}, {}, "exactly one"),
        ({"a.csv": "path,label\n,a\n"}, {}, "no usable files"),
    ],
)
def test_csv_errors(tmp_path, files, kwargs, message):
  for name, text in files.items():
    _csv(tmp_path / name, text)
  with pytest.raises(LayoutError, match=message):
    folder.list_csv(tmp_path, **kwargs)


def test_prepare_cli_flags_for_folder_and_csv(capsys):
  def flag_values(name, *argv):
    values = flags.FlagValues()
    datasets.get_flag_definer(name)(values)
    values(["prepare", *argv])
    return values

  assert {"valid_fraction", "test_fraction"} <= set(flag_values("folder"))
  assert "label_type" not in set(flag_values("folder"))
  assert {"valid_fraction", "test_fraction", "label_type"} <= set(flag_values("csv"))
  args = flag_values("csv", "--label_type", "multi_label", "--test_fraction", "0.3")
  assert (args.label_type, args.test_fraction, args.valid_fraction) == ("multi_label", 0.3, 0.1)
  assert prepare.main(["prepare", "folder", "--out", "o", "--valid_fraction", "1.5"]) == 2
  assert "--valid_fraction=1.5: must be in [0, 1)" in capsys.readouterr().err
