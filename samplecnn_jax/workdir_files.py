"""The files of a training workdir, read and written in one place.

  WORKDIR/config.json          the run's config (written at the start of training)
  WORKDIR/labels.json          class names of the run (`LabelInfo`; prediction without the store)
  WORKDIR/metrics_<split>.json the latest scores of a split (validation, test, eval-only)
  WORKDIR/predictions_<split>.npz  the clip scores behind the test and eval-only metrics
                               (`Predictions`; `baseline` writes one per model beside its JSON)
  WORKDIR/checkpoints/, best/  Orbax checkpoints (`checkpointing.py`)
  WORKDIR/tensorboard/         TensorBoard events (`train.Progress`)

Training, prediction and visualisation read a workdir through these functions, so a CLI
given `--workdir` alone finds the config and labels the run recorded. A file that does not
parse raises `DamagedFileError` naming it and the way out; training moves such a file to
WORKDIR/damaged/ (`set_aside_damaged`) and writes it again. (A lock file that
keeps two jobs out of one workdir belongs here too.) This module does not touch
checkpoints: `checkpointing.py` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from samplecnn_jax import store

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"  # Label vocabulary of a run (for prediction without the store).
LOCK_FILE = ".lock"  # Held (an OS file lock) by the one training process of the workdir.
DAMAGED_DIR = "damaged"  # Where training moves a damaged file of the workdir (never deleted).


class DamagedFileError(ValueError):
  """A workdir file that exists but does not parse (truncated, garbled); names the file."""


def _read_json(path: Path, fix: str) -> Any:
  """`path`'s JSON; a file that does not parse raises DamagedFileError naming it and `fix`."""
  try:
    return json.loads(path.read_bytes().decode())
  except (ValueError, UnicodeDecodeError) as error:
    raise DamagedFileError(
        f"{path} is damaged ({type(error).__name__}: {' '.join(str(error).split())[:120]}); "
        f"{fix}"
    ) from None


def set_aside_damaged(workdir: str | os.PathLike) -> list[Path]:
  """Moves a config.json or labels.json that does not parse to `workdir/damaged/` (never
  deletes it) and returns where they went. For training, which writes both anew right after;
  readers only report a damaged file (`DamagedFileError`)."""
  moved = []
  for name in (CONFIG_FILE, LABELS_FILE):
    path = Path(workdir) / name
    if not path.is_file():
      continue
    try:
      _read_json(path, "")
    except DamagedFileError as error:
      target, suffix = Path(workdir) / DAMAGED_DIR / name, 1
      while target.exists():
        target, suffix = target.with_name(f"{name}.{suffix}"), suffix + 1
      target.parent.mkdir(parents=True, exist_ok=True)
      os.replace(path, target)
      logging.warning("%s Moved it to %s; training writes a new one.",
                      str(error).partition(";")[0], target)
      moved.append(target)
  return moved


def metrics_path(workdir: str | os.PathLike, split: str) -> Path:
  return Path(workdir) / f"metrics_{split}.json"


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Records the run's config beside its checkpoints (for mismatch checks and reuse).

  Written under a temporary name and renamed, so other processes of a multi-host job that
  check it at the same moment never read half a file.
  """
  path = Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{CONFIG_FILE}.tmp{os.getpid()}")
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def saved_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The raw `config.json` of a workdir as a dict, or None when training never wrote one."""
  path = Path(workdir) / CONFIG_FILE
  return _read_json(path, _CONFIG_FIX) if path.exists() else None


# The way out of a damaged config.json (training moves it aside and writes it again).
_CONFIG_FIX = ("pass the config that trained the run with --config=configs/NAME.py[:ARG], or "
               "rerun training in this workdir (it moves the file aside and writes it again).")


def read_config(
    workdir: str | os.PathLike, config_file: str | None = None
) -> ml_collections.ConfigDict:
  """The run config: `config_file` (`file.py[:arg]` or a config.json) or `workdir/config.json`.

  `config.json` is what training recorded (`write_config`). It is laid over today's
  `config_base.base_config()`, so a workdir written before a field existed gets that field's
  default (new fields default to the old behaviour).
  """
  if config_file is None:
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
      raise FileNotFoundError(
          f"{workdir} has no {CONFIG_FILE}: is it a training workdir? Pass the "
          f"config that trained it with --config=configs/NAME.py[:ARG]."
      )
    return _config_from_json(path)
  file = config_file.partition(":")[0]
  if file.endswith(".json"):
    return _config_from_json(Path(file))
  from samplecnn_jax import config_base  # Imports the models (JAX): LabelInfo readers do not.

  return config_base.load_config(config_file)


def _config_from_json(path: Path) -> ml_collections.ConfigDict:
  from samplecnn_jax import config_base  # Imports the models (JAX): LabelInfo readers do not.

  config = config_base.base_config()
  config.update(_read_json(path, _CONFIG_FIX))
  return config


@dataclasses.dataclass(frozen=True)
class LabelInfo:
  """The `labels.json` record: class names of a run's outputs and, for Speech Commands, the
  coarser scoring classes. Training writes it beside the checkpoints so that prediction and
  visualisation name the classes without the prepared store."""

  vocabulary: tuple[str, ...]  # Name of output unit i.
  label_type: str  # multi_label (sigmoid) | multi_class (softmax).
  eval_vocabulary: tuple[str, ...] | None = None  # Scoring classes (12 for Speech Commands).
  eval_label_map: tuple[int, ...] | None = None  # Output unit -> index into eval_vocabulary.
  source: str = ""  # Where the names came from (a path, or "numbered"); not written.

  @classmethod
  def from_json(cls, data: dict[str, Any], source: str = "") -> LabelInfo:
    """From a labels.json or a store manifest (both hold these fields); checks they fit."""
    vocabulary = data.get("vocabulary")
    if not isinstance(vocabulary, list) or not vocabulary:
      raise ValueError(f"{source or 'labels'} has no 'vocabulary' list of class names.")
    eval_vocabulary = data.get("eval_vocabulary")
    eval_label_map = data.get("eval_label_map")
    if (eval_vocabulary is None) != (eval_label_map is None):
      raise ValueError(f"{source}: eval_vocabulary and eval_label_map go together.")
    if eval_label_map is not None:
      if len(eval_label_map) != len(vocabulary) or not all(
          isinstance(i, int) and 0 <= i < len(eval_vocabulary) for i in eval_label_map
      ):
        raise ValueError(
            f"{source}: eval_label_map must give, for each of the {len(vocabulary)} classes, "
            f"an index into the {len(eval_vocabulary)} eval_vocabulary names."
        )
    return cls(
        vocabulary=tuple(str(v) for v in vocabulary),
        label_type=str(data.get("label_type", "multi_label")),
        eval_vocabulary=None if eval_vocabulary is None else tuple(map(str, eval_vocabulary)),
        eval_label_map=None if eval_label_map is None else tuple(eval_label_map),
        source=source,
    )

  def to_json(self) -> dict[str, Any]:
    """The labels.json fields (the eval vocabulary and map only when present)."""
    record: dict[str, Any] = {"vocabulary": list(self.vocabulary), "label_type": self.label_type}
    if self.eval_label_map is not None:
      record["eval_vocabulary"] = list(self.eval_vocabulary)
      record["eval_label_map"] = list(self.eval_label_map)
    return record

  @classmethod
  def numbered(cls, num_classes: int, label_type: str) -> LabelInfo:
    """Names `class_0`, `class_1`, ... for a run whose vocabulary cannot be found."""
    return cls(tuple(f"class_{i}" for i in range(num_classes)), label_type, source="numbered")


def write_labels(workdir: str | os.PathLike, labels: LabelInfo) -> None:
  """Writes `labels.json` (`LabelInfo.to_json`)."""
  store.write_json(Path(workdir) / LABELS_FILE, labels.to_json())


def read_labels(
    workdir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
) -> LabelInfo | None:
  """The labels of a run, with the file they came from as `source`; None when there are none.

  `path` when given (it must exist), else `workdir/labels.json`, else the store manifest at
  `data_dir` (workdirs written before labels.json existed).
  """
  if path:
    if not Path(path).is_file():
      raise FileNotFoundError(f"--labels {path} does not exist.")
    candidates = [Path(path)]
  else:
    candidates = [Path(workdir) / LABELS_FILE]
    if data_dir is not None:
      candidates.append(Path(data_dir) / store.MANIFEST)
  for candidate in candidates:
    if candidate.is_file() and candidate.name == store.MANIFEST:
      return LabelInfo.from_json(store.Manifest.read(candidate.parent).label_record(),
                                 str(candidate))
    if candidate.is_file():
      fix = ("pass the store's class names with --labels=STORE/manifest.json, or rerun "
             "training in this workdir (it moves the file aside and writes it again).")
      return LabelInfo.from_json(_read_json(candidate, fix), str(candidate))
  return None


def write_metrics(
    workdir: str | os.PathLike, split: str, step: int, values: dict[str, Any]
) -> Path:
  """Writes `metrics_<split>.json` and returns its path (the caller picks the process)."""
  path = metrics_path(workdir, split)
  store.write_json(path, {"split": split, "step": int(step), **values})
  return path


def read_metrics(workdir: str | os.PathLike, split: str) -> dict[str, Any]:
  """The last scores written for `split` (`write_metrics`)."""
  return json.loads(metrics_path(workdir, split).read_text())


def predictions_path(folder: str | os.PathLike, split: str, model: str | None = None) -> Path:
  """`FOLDER/predictions_<split>.npz`, or `predictions_<split>_<model>.npz` for a baseline
  model (`<features>+<model>`)."""
  return Path(folder) / (f"predictions_{split}.npz" if model is None
                         else f"predictions_{split}_{model}.npz")


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
  """The `predictions_<split>.npz` record: one row per clip of a scored split, and how the run
  scored them, so that `compare` recomputes any run's metric from this file alone.

  `labels` are as the store holds them: class indices `(N,)` for a multi-class store,
  0/1 rows `(N, C)` for a multi-label one. `scores` are the clip scores `(N, C)` the metrics
  were computed from (segment probabilities averaged per clip; a baseline's class scores).
  """

  clip_ids: np.ndarray  # (N,) the store's clip ids, in the store's order.
  labels: np.ndarray  # (N,) int64 class indices or (N, C) uint8 multi-hot.
  scores: np.ndarray  # (N, C) clip scores.
  metric: str  # The metric the run is judged by (its config's `metric`).
  f_score_threshold: float = 0.5  # The threshold its F-score was computed at.
  eval_label_map: np.ndarray | None = None  # Output class -> scoring class (Speech Commands).

  @classmethod
  def of(cls, clip_ids: Any, labels: Any, scores: Any, *, label_type: str, metric: str,
         f_score_threshold: float = 0.5, eval_label_map: Any = None) -> Predictions:
    """The record of an evaluation's arrays; `labels` as class indices or multi-hot rows (the
    evaluator reads one-hot float rows for a multi-class store: they become indices)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if label_type == "multi_class" and labels.ndim == 2:
      labels = labels.argmax(axis=1)
    labels = labels.astype(np.int64 if labels.ndim == 1 else np.uint8)
    clip_ids = np.asarray([str(clip_id) for clip_id in clip_ids], dtype=str)
    if scores.ndim != 2 or not len(clip_ids) == len(labels) == len(scores):
      raise ValueError(f"Predictions need one clip id, label and score row per clip, got "
                       f"{len(clip_ids)} ids, labels {labels.shape}, scores {scores.shape}.")
    return cls(clip_ids, labels, scores, str(metric), float(f_score_threshold),
               None if eval_label_map is None else np.asarray(eval_label_map, np.int64))

  def save(self, path: str | os.PathLike) -> Path:
    """Writes the .npz under a temporary name and renames it (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"clip_ids": self.clip_ids, "labels": self.labels, "scores": self.scores,
              "metric": np.asarray(self.metric), "f_score_threshold": np.asarray(
                  self.f_score_threshold)}
    if self.eval_label_map is not None:
      arrays["eval_label_map"] = self.eval_label_map
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
      np.savez(handle, **arrays)
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> Predictions:
    with np.load(path, allow_pickle=False) as data:
      missing = {"clip_ids", "labels", "scores", "metric"} - set(data.files)
      if missing:
        raise ValueError(f"{path} is not a predictions file (no {', '.join(sorted(missing))}).")
      return cls(data["clip_ids"], data["labels"], data["scores"], str(data["metric"]),
                 float(data["f_score_threshold"]) if "f_score_threshold" in data.files else 0.5,
                 data["eval_label_map"] if "eval_label_map" in data.files else None)


class WorkdirLockedError(RuntimeError):
  """Another process is training in this workdir."""


@contextlib.contextmanager
def exclusive(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds `WORKDIR/.lock` for the duration: one training run per workdir.

  An OS file lock (flock), so the kernel releases it when the process ends, also on SIGKILL:
  a stale lock file never blocks a rerun. The holder's pid, host and start time are written
  into the file so that a second process can say who holds the workdir.
  """
  path = Path(workdir) / LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  handle = open(path, "a+")  # noqa: SIM115 (closed in finally; closing releases the lock)
  try:
    try:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "an unknown process"
      raise WorkdirLockedError(
          f"{workdir} is in use by another training run ({holder}). Wait for it to finish, "
          f"stop it, or use another --workdir."
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    yield
  finally:
    handle.close()
