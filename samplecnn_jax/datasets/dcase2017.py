"""DCASE 2017 Task 4 subtask A (audio tagging) as downloaded: weak labels and `Y*.wav` clips.

Reads the official weak-label ground truth (`groundtruth_weak_label_{training,testing,
evaluation}_set.csv`, plain or `.gz`) and finds the 10-s clips `Y<ytid>_<start>_<end>.wav`
anywhere under the source folder. Two split rules: `paper` (test = the 488-file testing set,
train/valid from the training set, as in the paper's Table 1) and `saudio` (training and
testing sets pooled, test = the 1,103-file evaluation set, as in the authors' JSTSP 2019
code). The validation set is a per-class sample drawn from the metadata only, so it does not
depend on which YouTube clips a user managed to download. Nothing is decoded here.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from absl import flags

from samplecnn_jax.datasets import common
from samplecnn_jax.datasets.common import ClipSpec, LayoutError, Listing, open_maybe_gz

# The 17 classes in the order of the official sound_event_list_17_classes.txt.
VOCABULARY = (
    "Train horn",
    "Air horn, truck horn",
    "Car alarm",
    "Reversing beeps",
    "Bicycle",
    "Skateboard",
    "Ambulance (siren)",
    "Fire engine, fire truck (siren)",
    "Civil defense siren",
    "Police car (siren)",
    "Screaming",
    "Car",
    "Car passing by",
    "Bus",
    "Truck",
    "Motorcycle",
    "Train",
)
GROUND_TRUTH = {
    "training": "groundtruth_weak_label_training_set.csv",
    "testing": "groundtruth_weak_label_testing_set.csv",
    "evaluation": "groundtruth_weak_label_evaluation_set.csv",
}
# split rule -> (official sets pooled for train/valid, official set used as test)
SPLIT_RULES = {
    "paper": (("training",), "testing"),
    "saudio": (("training", "testing"), "evaluation"),
}
VALID_FRACTION = 0.1
SEED = 123  # random_state of the authors' JSTSP 2019 code (sampleaudio lib/data/dcs.py).


def define_flags(flag_values: flags.FlagValues) -> None:
  """The `prepare dcase2017` flags: the options of `list_clips`."""
  common.define_lister_flags(flag_values, list_clips, {
      "split_rule": "paper: train/valid from the training set, test = testing set (488). "
                    "saudio: training+testing sets pooled for train/valid, test = evaluation "
                    "set (1,103).",
      "valid_fraction": "Fraction of each class's files drawn into the validation split.",
      "seed": "Seed of the validation sample.",
      "metadata_dir": "Folder searched for the ground-truth files (default: anywhere under "
                      "--src).",
  }, choices={"split_rule": SPLIT_RULES})


def read_weak_labels(path: Path) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
  """(file name, class index) rows of a weak-label ground-truth file, and the bad rows.

  Rows are `<ytid>_<start>_<end>.wav<TAB>start<TAB>end<TAB>label`, one per label, in file
  order (which the validation sample depends on).
  """
  name = path.name.removesuffix(".gz")
  rows, skipped = [], []
  with open_maybe_gz(path) as f:
    for line, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
      if not row or row == [""]:
        continue
      source = f"{name}:{line}"
      if len(row) != 4 or not row[0].endswith(".wav"):
        skipped.append({"source": source, "reason": "expected file.wav, start, end, label"})
      elif row[3] not in VOCABULARY:
        skipped.append({"source": source, "reason": f"unknown class {row[3]!r}"})
      else:
        rows.append((row[0], VOCABULARY.index(row[3])))
  return rows, skipped


def validation_files(rows: list[tuple[str, int]], fraction: float, seed: int) -> set[str]:
  """Per class, `round(fraction * n)` of the class's n rows, drawn without replacement.

  Each class draws with a fresh `np.random.RandomState(seed)` over its rows in file order:
  the same draw as pandas `DataFrame.sample(frac, random_state=seed)` in the authors' code,
  so `--split_rule saudio` reproduces their validation set (5,618 files) exactly.
  """
  chosen = set()
  for label in range(len(VOCABULARY)):
    members = [file for file, row_label in rows if row_label == label]
    size = round(fraction * len(members))
    picks = np.random.RandomState(seed).choice(len(members), size=size, replace=False)
    chosen.update(members[i] for i in picks)
  return chosen


def _walk(root: Path, names: set[str]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
  """Audio files `Y*.wav` by name (first found), and every path of each file in `names`."""
  audio: dict[str, Path] = {}
  found: dict[str, list[Path]] = {}
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for file in sorted(files):
      if file.startswith("Y") and file.endswith(".wav"):
        audio.setdefault(file, Path(folder) / file)
      elif file in names:
        found.setdefault(file, []).append(Path(folder) / file)
  return audio, found


def list_clips(
    src: Path,
    split_rule: str = "paper",
    valid_fraction: float = VALID_FRACTION,
    seed: int = SEED,
    metadata_dir: str | None = None,
) -> Listing:
  """Lists DCASE 2017 Task 4 clips found under `src`, labelled from the weak ground truth."""
  src = Path(src).absolute()
  if split_rule not in SPLIT_RULES:
    raise ValueError(f"--split_rule {split_rule!r}: choose one of {', '.join(SPLIT_RULES)}.")
  if not 0 <= valid_fraction < 1:
    raise ValueError(f"--valid_fraction must be in [0, 1), got {valid_fraction}.")
  if not src.is_dir():
    raise LayoutError(f"--src {src} is not a folder.")
  pooled, test_set = SPLIT_RULES[split_rule]
  needed = [GROUND_TRUTH[name] for name in (*pooled, test_set)]
  names = {file for name in needed for file in (name, name + ".gz")}
  audio, found = _walk(src, names)
  if metadata_dir is not None:
    _, found = _walk(Path(metadata_dir).absolute(), names)
  paths = {}
  for name in needed:
    candidates = found.get(name, []) + found.get(name + ".gz", [])
    if not candidates:
      raise LayoutError(
          f"Missing {name} under {metadata_dir or src} (it is in the Task 4 repository "
          "github.com/ankitshah009/Task-4-Large-scale-weakly-supervised-sound-event-detection-"
          "for-smart-cars; the evaluation file in its groundtruth_release/ folder)."
      )
    paths[name] = min(candidates, key=lambda path: (len(path.parts), str(path)))

  skipped: list[dict[str, str]] = []
  rows: dict[str, list[tuple[str, int]]] = {}
  for name in needed:
    rows[name], bad = read_weak_labels(paths[name])
    skipped += bad
  pool_rows = [row for name in needed[:-1] for row in rows[name]]
  valid = validation_files(pool_rows, valid_fraction, seed)

  clips, listed, seen = [], {"train": 0, "valid": 0, "test": 0}, set()
  for name in needed:
    labels: dict[str, set[int]] = {}
    for file, label in rows[name]:
      labels.setdefault(file, set()).add(label)
    for file, file_labels in labels.items():
      if file in seen:
        skipped.append({"source": file, "reason": f"in {name} and in an earlier set"})
        continue
      seen.add(file)
      split = "test" if name == needed[-1] else "valid" if file in valid else "train"
      listed[split] += 1
      path = audio.get("Y" + file)
      if path is None:
        skipped.append({"source": "Y" + file, "reason": f"listed in {name}, not found under src"})
        continue
      source = str(path.relative_to(src))
      clips.append(ClipSpec(file, str(path), split, tuple(sorted(file_labels)), source=source))

  return common.published_listing(
      "dcase2017", VOCABULARY, "multi_label", clips, skipped,
      version="DCASE 2017 Task 4 subtask A", split_rule=split_rule,
      details={
          "train_valid_from": [GROUND_TRUTH[name] for name in pooled],
          "test_from": GROUND_TRUTH[test_set],
          "valid_rule": f"per class round({valid_fraction} * n) files, RandomState({seed})",
          "vocabulary_order": "sound_event_list_17_classes.txt",
          "ground_truth": {name: str(path) for name, path in paths.items()},
          "listed_files": listed,  # Per split, from the metadata (before missing audio).
      },
  )
