"""The prepared-dataset store: 16 kHz int16 clips in ArrayRecord shards plus a JSON manifest.

Layout of a prepared folder (written by `samplecnn_jax.prepare`, read by the input pipeline):

  OUT/manifest.json                     what is in the store (the fields of `Manifest`)
  OUT/report.json                       every file that was skipped, with the reason
  OUT/<split>/<split>-00000.array_record  clips of one split, one record per clip

A record is a msgpack map: `clip_id` (str), `audio` (int16 little-endian mono PCM bytes),
`labels` (list of class indices into the manifest vocabulary; one index for multi-class
data) and `source` (the file it came from, relative to the raw dataset folder). A file name
that is not valid UTF-8 keeps its bytes: `clip_id` and `source` are written and read with
Python's `surrogateescape` (as `os.fsdecode` gives them), so `os.fsencode(record["source"])`
is the name on disk; the JSON files escape such characters as `\\udcXX` (json.loads + fsencode
give the bytes back).

Shards are written to a temporary name and renamed when complete, so a shard that exists
under its final name is whole; the manifest is written last, so a folder with a manifest
is a finished store. `Manifest` is the one reader and writer of manifest.json (code reads its
fields, never the JSON's keys). Readers open a store once with `Store.open(OUT)` (manifest
read and checked once, then passed around; `Store.check_matches(config)` checks a run config
against it).
This module does no decoding or resampling: that is `prepare`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.json"
SHARD_SUFFIX = ".array_record"
CLIP_LENGTHS = "clip_lengths.npy"  # Per split: int64 samples of every clip, in record order.
READ_THREADS = 4  # Threads reading records where a whole split is read (I/O and decoding overlap).


def encode_clip(clip_id: str, audio: np.ndarray, labels: Sequence[int], source: str = "") -> bytes:
  """Serialises one clip; `audio` must be a 1-D int16 array."""
  audio = np.asarray(audio)
  if audio.dtype != np.int16 or audio.ndim != 1:
    raise ValueError(f"audio must be 1-D int16, got {audio.dtype} {audio.shape} for {clip_id}")
  return msgpack.packb(
      {
          "clip_id": clip_id,
          "audio": audio.astype("<i2").tobytes(),
          "labels": [int(label) for label in labels],
          "source": source,
      },
      use_bin_type=True,
      unicode_errors="surrogateescape",  # Non-UTF-8 file names keep their bytes.
  )


def decode_clip(record: bytes) -> dict[str, Any]:
  """Inverse of `encode_clip`: audio as int16 numpy, labels as an int32 array."""
  item = msgpack.unpackb(record, raw=False, unicode_errors="surrogateescape")
  return {
      "clip_id": item["clip_id"],
      "audio": np.frombuffer(item["audio"], dtype="<i2"),
      "labels": np.asarray(item["labels"], dtype=np.int32),
      "source": item.get("source", ""),
  }


def _atomic_replace(tmp: Path, final: Path) -> None:
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, final)


def write_shard(path: str | os.PathLike, records: Iterable[bytes]) -> int:
  """Writes encoded clips to one ArrayRecord shard atomically; returns the record count.

  `group_size:1` keeps every record individually addressable, which Grain's random access
  needs for global shuffling. Records are stored uncompressed: PCM audio shrinks only ~7%
  under zstd, while decompressing a 29-s clip for every training segment cost ~4x the read
  time (benchmarks/loader_speed.py).
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  final = Path(path)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.with_name(final.name + ".tmp")
  writer = ArrayRecordWriter(str(tmp), "group_size:1,uncompressed")
  count = 0
  try:
    for record in records:
      writer.write(record)
      count += 1
  finally:
    writer.close()
  _atomic_replace(tmp, final)
  return count


def write_json(path: str | os.PathLike, data: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  final = Path(path)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.with_name(final.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
  _atomic_replace(tmp, final)


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  """One split of a store, as the manifest lists it."""

  num_clips: int
  num_samples: int  # Samples of all its clips together, at the store's rate.
  shards: tuple[str, ...]  # Shard files relative to the store folder, in record order.
  clip_lengths: str  # Relative path of the per-clip lengths (`CLIP_LENGTHS`).

  def to_json(self) -> dict[str, Any]:
    return {"num_clips": self.num_clips, "num_samples": self.num_samples,
            "shards": list(self.shards), "clip_lengths": self.clip_lengths}

  @classmethod
  def from_json(cls, split: str, data: dict[str, Any]) -> SplitInfo:
    return cls(
        num_clips=int(data["num_clips"]),
        num_samples=int(data["num_samples"]),
        shards=tuple(data["shards"]),
        clip_lengths=data.get("clip_lengths", f"{split}/{CLIP_LENGTHS}"),
    )


@dataclasses.dataclass(frozen=True)
class Manifest:
  """`manifest.json`: what a prepared store holds. `prepare` writes it, everyone reads it here.

  The first four fields are what every store has; the others have defaults, so that stores
  written before a field existed still load. `extra` holds the dataset's own fields
  (`Listing.extra`: split rule, dataset version, ...), written at the top level of the JSON
  next to these, so the file reads the same whichever code wrote it.
  """

  sample_rate: int  # Hz of the stored audio.
  label_type: str  # multi_label (sigmoid) | multi_class (softmax).
  vocabulary: tuple[str, ...]  # Class names; record labels index into it.
  splits: dict[str, SplitInfo]  # In prepare's order: train, valid, test, then the others.
  dataset: str = ""  # The `prepare` dataset name.
  source: str | None = None  # The raw folder or file it was prepared from (None: the demo).
  created_by: str = ""  # "samplecnn_jax VERSION".
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # The dataset's flags.
  shard_size: int | None = None  # Clips per shard.
  skipped: int = 0  # Files skipped (reasons in report.json).
  warnings: int = 0  # Files kept with a warning (in report.json).
  # Speech Commands: the coarser classes it is scored on, and output class -> scoring class.
  eval_vocabulary: tuple[str, ...] | None = None
  eval_label_map: tuple[int, ...] | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  format_version: int = FORMAT_VERSION

  def __post_init__(self):
    clash = set(self.extra) & _MANIFEST_KEYS
    if clash:
      raise ValueError(f"extra manifest fields may not override the fields {sorted(clash)}")

  def to_json(self) -> dict[str, Any]:
    """The JSON object of manifest.json (key order as written since format 1)."""
    data = {
        "format_version": self.format_version,
        "dataset": self.dataset,
        "sample_rate": self.sample_rate,
        "label_type": self.label_type,
        "vocabulary": list(self.vocabulary),
        "splits": {split: info.to_json() for split, info in self.splits.items()},
        "source": self.source,
        "created_by": self.created_by,
        "options": self.options,
        "shard_size": self.shard_size,
        "skipped": self.skipped,
        "warnings": self.warnings,
        **self.extra,
    }
    if self.eval_vocabulary is not None:
      data["eval_vocabulary"] = list(self.eval_vocabulary)
    if self.eval_label_map is not None:
      data["eval_label_map"] = list(self.eval_label_map)
    return data

  @classmethod
  def from_json(cls, data: dict[str, Any], path: str = MANIFEST) -> Manifest:
    """Inverse of `to_json`; missing optional fields take their defaults (`path`: for errors)."""
    missing = [key for key in ("sample_rate", "label_type", "vocabulary", "splits")
               if key not in data]
    if missing:
      raise ValueError(f"{path} has no {', '.join(missing)}: prepare the dataset again.")
    known = {field.name for field in dataclasses.fields(cls)} - {"extra"}
    values = {key: value for key, value in data.items() if key in known}
    values["vocabulary"] = tuple(data["vocabulary"])
    values["splits"] = {split: SplitInfo.from_json(split, info)
                        for split, info in data["splits"].items()}
    for key in ("eval_vocabulary", "eval_label_map"):
      if data.get(key) is not None:
        values[key] = tuple(data[key])
    extra = {key: value for key, value in data.items() if key not in known}
    return cls(**values, extra=extra)

  @classmethod
  def read(cls, prepared_dir: str | os.PathLike) -> Manifest:
    """Reads `manifest.json`, explaining how to create the store when it is missing."""
    path = Path(prepared_dir) / MANIFEST
    if not path.exists():
      raise FileNotFoundError(
          f"No prepared dataset at {Path(prepared_dir)} (missing {MANIFEST}). Create it with "
          f"`python -m samplecnn_jax.prepare DATASET --src RAW_DIR --out {Path(prepared_dir)}` "
          f"(or `python -m samplecnn_jax.prepare demo --out {Path(prepared_dir)}` for the "
          "demo), or point --config.data_dir at an existing prepared folder."
      )
    data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
      raise ValueError(
          f"{path} has store format {data.get('format_version')}, this code reads "
          f"{FORMAT_VERSION}: prepare the dataset again."
      )
    return cls.from_json(data, str(path))

  def write(self, prepared_dir: str | os.PathLike) -> None:
    """Writes `manifest.json` atomically; `prepare` does this last, once every shard is whole."""
    write_json(Path(prepared_dir) / MANIFEST, self.to_json())

  def label_record(self) -> dict[str, Any]:
    """What a run needs to name its classes without the store (written as labels.json)."""
    record: dict[str, Any] = {"vocabulary": list(self.vocabulary), "label_type": self.label_type}
    if self.eval_vocabulary is not None:
      record["eval_vocabulary"] = list(self.eval_vocabulary)
    if self.eval_label_map is not None:
      record["eval_label_map"] = list(self.eval_label_map)
    return record


# The top-level keys of manifest.json that `Manifest` owns (extra fields may not reuse them).
_MANIFEST_KEYS = {field.name for field in dataclasses.fields(Manifest)} - {"extra"}


class ClipSource:
  """Random access to the decoded clips of one split (a Grain `RandomAccessDataSource`).

  The shards are opened on first use, so that pickling a source (Grain sends the transforms
  that hold one to spawned worker processes) carries only the shard paths.
  """

  def __init__(
      self, prepared_dir: str | os.PathLike, split: str, paths: Sequence[str] | None = None
  ):
    self.prepared_dir = str(prepared_dir)
    self.split = split
    # `Store.clips` passes the paths it already knows; otherwise the manifest is read here.
    self.paths = list(paths) if paths is not None else Store.open(prepared_dir).shard_paths(split)
    self._source = None

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_source": None}

  def _open(self):
    if self._source is None:
      import grain

      try:
        self._source = grain.sources.ArrayRecordDataSource(self.paths) if self.paths else []
      except Exception as error:  # Riegeli's errors do not name the file: find it.
        bad = [path for path in self.paths if not _opens(grain, path)] or self.paths
        raise ValueError(
            f"store shard {bad[0]} is damaged ({' '.join(str(error).split())[:160]}); delete "
            f"it and re-run the `prepare` command that wrote {self.prepared_dir} (it rewrites "
            f"missing shards).") from error
    return self._source

  def __len__(self) -> int:
    return len(self._open())

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_clip(self._open()[int(index)])

  def __repr__(self) -> str:
    return f"ClipSource({self.prepared_dir!r}, split={self.split!r}, clips={len(self)})"



def _opens(grain: Any, path: str) -> bool:
  try:
    grain.sources.ArrayRecordDataSource([path])
  except Exception:  # noqa: BLE001 -- any reader error means the shard is damaged.
    return False
  return True


@dataclasses.dataclass(frozen=True, eq=False)
class Store:
  """A prepared store, opened once: its manifest is read and checked when it is opened.

  Picklable (a path and a `Manifest`), so it travels to Grain worker processes with the
  transforms that hold it. Everything here reads the in-memory manifest; only `clips`,
  `clip_lengths` and `clip_labels` touch the split's files.
  """

  path: str
  manifest: Manifest

  @classmethod
  def open(cls, prepared_dir: str | os.PathLike) -> Store:
    return cls(str(prepared_dir), Manifest.read(prepared_dir))

  def check_matches(self, config: Any) -> None:
    """Raises ValueError when `config` does not fit this store's classes, labels or rate.

    A model trained with the wrong number of outputs or the wrong loss would fail late or
    silently, so mismatches are reported up front with the flag that fixes them. This reads
    only the in-memory manifest.
    """
    num_classes = len(self.manifest.vocabulary)
    label_type, sample_rate = self.manifest.label_type, self.manifest.sample_rate
    checks = (
        ("num_classes", num_classes, f"{num_classes} classes in its vocabulary"),
        ("label_type", label_type, f"label_type {label_type!r}"),
        ("sample_rate", sample_rate, f"audio at {sample_rate} Hz"),
    )
    for field, value, what in checks:
      if config[field] != value:
        raise ValueError(
            f"The store {self.path} has {what} but config.{field} is {config[field]!r}. Set "
            f"--config.{field}={value} (or point --config.data_dir at the store prepared for "
            f"this config)."
        )

  def split_info(self, split: str) -> SplitInfo:
    """The manifest entry of `split`, with a clear error for unknown splits."""
    splits = self.manifest.splits
    if split not in splits:
      raise ValueError(
          f"Split {split!r} is not in {self.path}; it has: {', '.join(sorted(splits))}."
      )
    return splits[split]

  def num_clips(self, split: str) -> int:
    return self.split_info(split).num_clips

  def shard_paths(self, split: str) -> list[str]:
    return [str(Path(self.path) / shard) for shard in self.split_info(split).shards]

  def clips(self, split: str) -> ClipSource:
    """Random access to the decoded clips of `split` (opened on first read)."""
    return ClipSource(self.path, split, self.shard_paths(split))

  def clip_lengths(self, split: str) -> np.ndarray:
    """Samples per clip of `split` (int64, record order).

    Reads `<split>/clip_lengths.npy` written by `prepare`; stores without it are measured by
    decoding every record (slow, but correct).
    """
    info = self.split_info(split)
    path = Path(self.path) / info.clip_lengths
    expected = info.num_clips
    if path.exists():
      lengths = np.load(path).astype(np.int64)
      if lengths.shape != (expected,):
        raise ValueError(
            f"{path} has {lengths.shape[0]} entries but the manifest lists {expected} clips in "
            f"{split!r}: the store is inconsistent, prepare it again."
        )
      return lengths
    records = self.clips(split)
    return np.asarray([len(records[i]["audio"]) for i in range(len(records))], np.int64)

  def clip_labels(self, split: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    """The clip ids and float32 multi-hot labels `(num_clips, num_classes)` of `split`.

    Row i belongs to the clip with `clip_index == i` in evaluation batches. This reads every
    record once (audio is discarded): callers keep the result (`evaluate.Evaluator` does).
    """
    import grain

    ds = grain.MapDataset.range(self.num_clips(split)).map(_ClipMetadata(self.clips(split)))
    read = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=64)
    clip_ids, labels = [], np.zeros((len(ds), num_classes), np.float32)
    for index, (clip_id, label_indices) in enumerate(ds.to_iter_dataset(read)):
      clip_ids.append(clip_id)
      labels[index, label_indices] = 1.0
    return clip_ids, labels

  def __repr__(self) -> str:
    return f"Store({self.path!r}, splits={sorted(self.manifest.splits)})"


class _ClipMetadata:
  def __init__(self, records: ClipSource):
    self.records = records

  def __call__(self, index: int) -> tuple[str, np.ndarray]:
    record = self.records[index]
    return record["clip_id"], record["labels"]
