"""MagnaTagATune (MTAT) as downloaded: `annotations_final.csv` and the mp3 folders `0`..`f`.

Lists the clips of the standard auto-tagging setup of the sample-level CNN papers: the 50 most
frequent tags, clips with none of them dropped, split by folder (`0`-`b` train, `c` valid,
`d`-`f` test), or by the published split lists of Lee et al. 2017 (`--split_lists`, exactly
15,244 / 1,529 / 4,332 clips). It reads metadata and checks that files exist; it does not
decode audio (unreadable mp3s are reported by `prepare`).
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from samplecnn_jax.datasets import common
from samplecnn_jax.datasets.common import ClipSpec, LayoutError, Listing, open_maybe_gz

ANNOTATIONS = "annotations_final.csv"
FOLDERS = "0123456789abcdef"  # The 16 mp3 folders of the download.
TRAIN_FOLDERS = "0123456789ab"
VALID_FOLDERS = "c"
TEST_FOLDERS = "def"
NUM_TAGS = 50
# Published split of github.com/jongpillee/music_dataset_split (MTAT_split/).
SPLIT_LIST_FILES = {
    "train": "train_list_pub.cP",
    "valid": "valid_list_pub.cP",
    "test": "test_list_pub.cP",
}


def define_flags(flag_values: flags.FlagValues) -> None:
  """The `prepare mtat` flags: the options of `list_clips`."""
  common.define_lister_flags(flag_values, list_clips, {
      "num_tags": "Most frequent tags to keep.",
      **{f"{split}_folders": f"mp3 folders (hex digits) of the {split} split."
         for split in ("train", "valid", "test")},
      "split_lists": "Folder with train/valid/test_list_pub.cP of jongpillee/music_dataset_split: "
                     "use that exact split (15,244 / 1,529 / 4,332) instead of the folder rule.",
  })


def _plain_or_gz(path: Path) -> Path | None:
  """`path`, or `path.gz` when only the gzipped copy exists; None when neither does."""
  for candidate in (path, path.with_name(path.name + ".gz")):
    if candidate.exists():
      return candidate
  return None


def read_annotations(
    path: Path,
) -> tuple[list[str], list[tuple[str, tuple[int, ...]]], list[dict[str, str]]]:
  """Parses `annotations_final.csv`: (tag names, [(mp3_path, 0/1 flags)], skipped rows).

  The file is tab-separated with every field in double quotes and CRLF line ends; the csv
  module handles quoted and unquoted variants alike.
  """
  with open_maybe_gz(_plain_or_gz(path) or path) as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, [])
    if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
      raise LayoutError(
          f"{path} does not look like MTAT's annotations_final.csv: expected a tab-separated "
          f"header 'clip_id, <tags...>, mp3_path', got {header[:2]}...{header[-1:]}."
      )
    tags = header[1:-1]
    rows, skipped = [], []
    for line, row in enumerate(reader, start=2):
      if not row:
        continue
      source = f"{ANNOTATIONS}:{line}"
      if len(row) != len(header):
        skipped.append({"source": source, "reason": f"{len(row)} columns, expected {len(header)}"})
      elif not row[-1]:
        skipped.append({"source": source, "reason": "empty mp3_path"})
      elif any(flag not in ("0", "1") for flag in row[1:-1]):
        skipped.append({"source": source, "reason": "tag columns must be 0 or 1"})
      else:
        rows.append((row[-1], tuple(int(flag) for flag in row[1:-1])))
  return tags, rows, skipped


def top_tag_columns(counts: Sequence[int], num_tags: int) -> list[int]:
  """Columns of the `num_tags` most frequent tags, by descending count; ties by column order."""
  return sorted(range(len(counts)), key=lambda column: (-counts[column], column))[:num_tags]


def read_split_lists(folder: Path) -> dict[str, str]:
  """mp3_path -> split, from the Python-2 pickles `<split>_list_pub.cP` (plain or .gz).

  Entries are `"<folder>/<clip>.npy"`; the clip's mp3 has the same path ending in `.mp3`.
  """
  split_of = {}
  for split, name in SPLIT_LIST_FILES.items():
    path = _plain_or_gz(folder / name)
    if path is None:
      raise LayoutError(
          f"--split_lists {folder}: missing {name} (expected {', '.join(SPLIT_LIST_FILES.values())}"
          " from github.com/jongpillee/music_dataset_split, folder MTAT_split)."
      )
    with open_maybe_gz(path, binary=True) as f:
      entries = pickle.load(f, encoding="latin1")
    for entry in entries:
      split_of.setdefault(str(entry).removesuffix(".npy") + ".mp3", split)
  return split_of


def _folder_split(train: str, valid: str, test: str) -> dict[str, str]:
  """Folder digit -> split, checking that the folder sets are valid and disjoint."""
  split_of: dict[str, str] = {}
  for split, folders in (("train", train), ("valid", valid), ("test", test)):
    for folder in folders:
      if folder not in FOLDERS or folder in split_of:
        raise ValueError(
            f"--{split}_folders {folders!r}: folders are the hex digits {FOLDERS}, each in "
            f"at most one split (train {train!r}, valid {valid!r}, test {test!r})."
        )
      split_of[folder] = split
  return split_of


def list_clips(
    src: Path,
    num_tags: int = NUM_TAGS,
    train_folders: str = TRAIN_FOLDERS,
    valid_folders: str = VALID_FOLDERS,
    test_folders: str = TEST_FOLDERS,
    split_lists: str | None = None,
) -> Listing:
  """Lists MTAT under `src` (annotations_final.csv and the mp3 folders 0..f).

  The vocabulary is the `num_tags` most frequent tags over all annotated clips, in descending
  count (ties: annotation column order), named as in the annotation header ("no vocals").
  """
  src = Path(src).absolute()
  if num_tags < 1:
    raise ValueError(f"--num_tags must be >= 1, got {num_tags}.")
  if _plain_or_gz(src / ANNOTATIONS) is None:
    raise LayoutError(
        f"Expected {src / ANNOTATIONS} (from the MagnaTagATune download page) next to the mp3 "
        "folders 0..f."
    )
  if not any((src / folder).is_dir() for folder in FOLDERS):
    raise LayoutError(
        f"Expected the mp3 folders 0..f under {src} (concatenate mp3.zip.001-003 and unzip there)."
    )
  folder_split = _folder_split(train_folders, valid_folders, test_folders)
  list_split = read_split_lists(Path(split_lists)) if split_lists else None

  tags, rows, skipped = read_annotations(src / ANNOTATIONS)
  counts = [sum(column) for column in zip(*(tagged for _, tagged in rows), strict=True)]
  counts = counts or [0] * len(tags)
  columns = top_tag_columns(counts, num_tags)
  vocabulary = [tags[column] for column in columns]
  label_of_column = {column: label for label, column in enumerate(columns)}

  def split_of(mp3_path: str) -> str | None:
    if list_split is not None:
      return list_split.get(mp3_path)
    return folder_split.get(mp3_path.split("/", 1)[0])

  clips, seen, without_tags, unassigned = [], set(), 0, 0
  for mp3_path, tagged in rows:
    split = split_of(mp3_path)
    labels = tuple(sorted(label_of_column[c] for c in label_of_column if tagged[c]))
    if split is None:
      unassigned += 1
    elif not labels:
      without_tags += 1
      if list_split is not None:
        skipped.append({"source": mp3_path, "reason": f"in the {split} list but has no top tag"})
    elif mp3_path in seen:
      skipped.append({"source": mp3_path, "reason": "listed twice in annotations_final.csv"})
    elif not (src / mp3_path).is_file():
      skipped.append({"source": mp3_path, "reason": "in annotations_final.csv, file missing"})
    else:
      clips.append(ClipSpec(mp3_path, str(src / mp3_path), split, labels, source=mp3_path))
    seen.add(mp3_path)
  if list_split is not None:
    for mp3_path in sorted(set(list_split) - seen):
      skipped.append(
          {"source": mp3_path, "reason": f"in the {list_split[mp3_path]} list, not in annotations"}
      )

  if list_split is not None:
    split_rule = f"split lists {', '.join(SPLIT_LIST_FILES.values())} from {split_lists}"
  else:
    split_rule = f"folders: train {train_folders}, valid {valid_folders}, test {test_folders}"
  return common.published_listing(
      "mtat", vocabulary, "multi_label", clips, skipped,
      version="MagnaTagATune (annotations_final.csv, 25,863 clips)", split_rule=split_rule,
      details={
          "tag_rule": f"top {num_tags} tags by count over all clips; ties by column order",
          "tag_counts": {tags[column]: counts[column] for column in columns},
          "clips_without_top_tags": without_tags,
          "clips_in_no_split": unassigned,
      },
  )
