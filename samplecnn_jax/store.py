"""The prepared-dataset store: 16 kHz int16 clips in ArrayRecord shards plus a JSON manifest.

Layout of a prepared folder (written by `samplecnn_jax.prepare`, read by the input pipeline):

  OUT/manifest.json                     what is in the store (see `Manifest` fields below)
  OUT/report.json                       every file that was skipped, with the reason
  OUT/<split>/<split>-00000.array_record  clips of one split, one record per clip

A record is a msgpack map: `clip_id` (str), `audio` (int16 little-endian mono PCM bytes),
`labels` (list of class indices into the manifest vocabulary; one index for multi-class
data) and `source` (the file it came from, relative to the raw dataset folder).

Shards are written to a temporary name and renamed when complete, so a shard that exists
under its final name is whole; the manifest is written last, so a folder with a manifest
is a finished store. This module does no decoding or resampling: that is `prepare`'s job.
"""

from __future__ import annotations

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
  )


def decode_clip(record: bytes) -> dict[str, Any]:
  """Inverse of `encode_clip`: audio as int16 numpy, labels as an int32 array."""
  item = msgpack.unpackb(record, raw=False)
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


def read_manifest(prepared_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads `manifest.json`, explaining how to create the store when it is missing."""
  path = Path(prepared_dir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(
        f"No prepared dataset at {Path(prepared_dir)} (missing {MANIFEST}). Create it with "
        f"`python -m samplecnn_jax.prepare DATASET --src RAW_DIR --out {Path(prepared_dir)}` "
        f"(or `python -m samplecnn_jax.prepare demo --out {Path(prepared_dir)}` for the demo), "
        f"or point --config.data_dir at an existing prepared folder."
    )
  manifest = json.loads(path.read_text())
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(
        f"{path} has store format {manifest.get('format_version')}, this code reads "
        f"{FORMAT_VERSION}: prepare the dataset again."
    )
  return manifest


def split_info(prepared_dir: str | os.PathLike, split: str) -> dict[str, Any]:
  """The manifest entry of `split`, with a clear error for unknown splits."""
  splits = read_manifest(prepared_dir)["splits"]
  if split not in splits:
    raise ValueError(
        f"Split {split!r} is not in {prepared_dir}; it has: {', '.join(sorted(splits))}."
    )
  return splits[split]


def shard_paths(prepared_dir: str | os.PathLike, split: str) -> list[str]:
  """The shard files of `split`, from the manifest."""
  return [str(Path(prepared_dir) / shard) for shard in split_info(prepared_dir, split)["shards"]]


class ClipSource:
  """Random access to the decoded clips of one split (a Grain `RandomAccessDataSource`).

  The shards are opened on first use, so that pickling a source (Grain sends the transforms
  that hold one to spawned worker processes) carries only the shard paths.
  """

  def __init__(self, prepared_dir: str | os.PathLike, split: str):
    self.prepared_dir = str(prepared_dir)
    self.split = split
    self.paths = shard_paths(prepared_dir, split)
    self._source = None

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_source": None}

  def _open(self):
    if self._source is None:
      import grain

      self._source = grain.sources.ArrayRecordDataSource(self.paths) if self.paths else []
    return self._source

  def __len__(self) -> int:
    return len(self._open())

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_clip(self._open()[int(index)])

  def __repr__(self) -> str:
    return f"ClipSource({self.prepared_dir!r}, split={self.split!r}, clips={len(self)})"


def multi_hot(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
  """Float32 multi-hot (or one-hot) vector of `labels`."""
  vector = np.zeros((num_classes,), np.float32)
  vector[np.asarray(labels, dtype=np.int64)] = 1.0
  return vector
