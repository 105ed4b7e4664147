"""Hugging Face datasets: a `save_to_disk` folder or parquet files with an audio column.

`hf` (`list_clips`): SRC is a folder written by `Dataset.save_to_disk` /
`DatasetDict.save_to_disk`, a `.parquet` file, or a folder of them (the Hub's layout,
`data/train-00000-of-00002.parquet`: the split is the file name up to its first `-`, or the
name of the folder it is in). A `DatasetDict`'s splits `train`, `validation` (or `valid`,
`val`) and `test` become ours (`valid` for validation); other split names are kept. One
`Dataset`, or parquet files without split names, need a split column (`--split_column`;
`split` is used when there is one).

Labels come from `--label_column`: a `ClassLabel` (its names, in its order), strings (sorted),
or a list of either (then the data is multi-label). Clip ids come from `--id_column` (`id`
when the dataset has one), else `<split>-<row>`. The audio column holds `{"bytes", "path"}`
as `Audio(decode=False)` stores it: a path-only row is decoded by `prepare` like any file;
embedded bytes are decoded here with soundfile, so the `datasets` package never decodes
audio (datasets 4+ would need torchcodec). `datasets` is imported only when this dataset is
used (`pip install '.[hf]'`). This module reads tables; it does not download from the Hub.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from samplecnn_jax import audio
from samplecnn_jax.datasets import common
from samplecnn_jax.datasets.common import ClipSpec, LayoutError, Listing
from samplecnn_jax.datasets.folder import SPLIT_ALIASES

SAVE_TO_DISK_FILES = ("dataset_dict.json", "state.json")  # What marks a save_to_disk folder.
DEFAULT_SPLIT_COLUMN = "split"  # Used, when present, if --split_column is not given.
DEFAULT_ID_COLUMN = "id"  # Likewise for --id_column.


def define_flags(flag_values: flags.FlagValues) -> None:
  """The `prepare hf` flags: the column names."""
  common.define_lister_flags(flag_values, list_clips, {
      "audio_column": "Column of the audio ({bytes, path}, as Audio(decode=False) stores it).",
      "label_column": "Column of the labels: a ClassLabel, strings, or lists of either "
                      "(multi-label).",
      "split_column": f"Column of the split, for one Dataset without splits (default: "
                      f"'{DEFAULT_SPLIT_COLUMN}' when there is one).",
      "id_column": f"Column of unique clip ids (default: '{DEFAULT_ID_COLUMN}' when there is "
                   "one, else <split>-<row>).",
  })


def _import_datasets():
  try:
    import datasets
  except ImportError:
    raise LayoutError("`prepare hf` needs the datasets package: pip install '.[hf]'") from None
  datasets.disable_progress_bars()  # prepare shows its own.
  return datasets


def _parquet_split(path: Path) -> str | None:
  """The split a Hub-layout parquet file belongs to (`train-0000-of-0002`, `test/x`), if any."""
  for name in (path.stem.split("-")[0], path.parent.name):
    if name.lower() in SPLIT_ALIASES:
      return name.lower()
  return None


@functools.lru_cache(maxsize=2)  # Workers reopen SRC once each; tables are memory-mapped.
def open_tables(src: str) -> tuple[dict[str | None, Any], Any]:
  """SRC's tables by split name (None: no split names) and their `datasets.Features`."""
  datasets = _import_datasets()
  root = Path(src)
  if root.is_dir() and any((root / name).is_file() for name in SAVE_TO_DISK_FILES):
    loaded = datasets.load_from_disk(str(root))
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}
    features = next(iter(parts.values())).features
    # save_to_disk wrote the rows in order (no indices mapping); flatten_indices() would write
    # a cache file into SRC.
    return {name: part.data for name, part in parts.items()}, features

  import pyarrow as pa
  import pyarrow.parquet as pq

  files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
  if not files:
    raise LayoutError(
        f"{root} is neither a save_to_disk folder (no {' or '.join(SAVE_TO_DISK_FILES)}) nor "
        "a parquet file or a folder holding *.parquet"
    )
  groups: dict[str | None, list] = {}
  splits = {path: _parquet_split(path) for path in files}
  unnamed = None in splits.values()
  for path in files:  # Split names only when every file has one.
    groups.setdefault(None if unnamed else splits[path], []).append(path)
  try:
    schema = pq.read_schema(files[0])
    tables = {
        name: pa.concat_tables(pq.read_table(path, memory_map=True) for path in paths)
        for name, paths in groups.items()
    }
  except (pa.ArrowInvalid, OSError) as e:
    raise LayoutError(f"cannot read the parquet files under {root}: {e}") from None
  return tables, datasets.Features.from_arrow_schema(schema)


def _label_kind(feature: Any, datasets) -> tuple[bool, list[str] | None]:
  """(multi-label?, the ClassLabel names or None for string labels) of a label feature."""
  multi = isinstance(feature, list) or hasattr(feature, "feature")  # Sequence, List, LargeList.
  if multi:
    feature = feature[0] if isinstance(feature, list) else feature.feature
  if isinstance(feature, datasets.ClassLabel):
    return multi, list(feature.names)
  if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
    return multi, None
  raise LayoutError(
      f"labels must be a ClassLabel, strings, or lists of either; got {feature}; cast the "
      "column (cast_column(..., ClassLabel(names=...)))"
  )


def _require(name: str, columns: Sequence[str], flag: str) -> None:
  if name not in columns:
    raise LayoutError(
        f"the dataset has no column {name!r} (its columns: {', '.join(columns)}); pass "
        f"--{flag}"
    )


def _audio_cells(table: Any, name: str) -> Iterator[tuple[bytes | None, str | None]]:
  """(bytes, path) of each row, one row in memory at a time (the column may be gigabytes)."""
  for chunk in table.column(name).chunks:
    data, paths = chunk.field("bytes"), chunk.field("path")
    for i in range(len(chunk)):
      yield (None, None) if not chunk[i].is_valid else (data[i].as_py(), paths[i].as_py())


def _digest(data: bytes) -> str:
  return hashlib.blake2b(data, digest_size=8).hexdigest()


def list_clips(
    src: Path,
    *,
    audio_column: str = "audio",
    label_column: str = "label",
    split_column: str = "",
    id_column: str = "",
    sample_rate: int = 16000,
) -> Listing:
  """Lists the rows of a save_to_disk folder or parquet files as clips (see the module doc)."""
  datasets = _import_datasets()
  src = Path(src).expanduser().resolve()
  open_tables.cache_clear()  # SRC may have been saved again since this process last read it.
  tables, features = open_tables(str(src))
  columns = list(features)
  _require(audio_column, columns, "audio_column")
  _require(label_column, columns, "label_column")
  multi_label, names = _label_kind(features[label_column], datasets)
  id_column = id_column or (DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in features else "")
  if None in tables:
    split_column = split_column or DEFAULT_SPLIT_COLUMN
    if split_column not in features:
      raise LayoutError(
          f"{src} holds one table without splits and no column {split_column!r} (its "
          f"columns: {', '.join(columns)}); pass --split_column or save a DatasetDict"
      )

  if id_column:
    _require(id_column, columns, "id_column")
  rows = []  # (hf split, row, our split, clip id, labels, (bytes digest, path))
  for hf_split, table in tables.items():
    labels = table.column(label_column).to_pylist()
    ids = table.column(id_column).to_pylist() if id_column else None
    row_splits = table.column(split_column).to_pylist() if hf_split is None else None
    cells = ((data and _digest(data), path) for data, path in _audio_cells(table, audio_column))
    for row, (label, cell) in enumerate(zip(labels, cells, strict=True)):
      split = str(row_splits[row]) if row_splits else hf_split
      ours = SPLIT_ALIASES.get(split.lower(), split)
      clip_id = str(ids[row]) if ids else f"{split}-{row}"
      rows.append((hf_split, row, ours, clip_id, label, cell))

  def as_list(label):
    items = label if multi_label else [label]
    return [x for x in (items or []) if x not in (None, "") and (names is None or x >= 0)]

  vocabulary = names or sorted({str(x) for *_, label, _ in rows for x in as_list(label)})
  if not vocabulary:
    raise LayoutError(f"the column {label_column!r} holds no labels")
  index = {name: i for i, name in enumerate(vocabulary)}
  clips, skipped, seen, locations = [], [], set(), {}
  for hf_split, row, split, clip_id, label, cell in rows:
    source = f"{hf_split or split}[{row}]"
    found = as_list(label)
    if not found and not multi_label:
      skipped.append({"source": source, "reason": f"row {row} has no label"})
      continue
    if clip_id in seen:
      skipped.append({"source": source, "reason": f"clip id {clip_id!r} is used twice"})
      continue
    seen.add(clip_id)
    digest, path = cell
    labels = tuple(sorted({x if names else index[str(x)] for x in found}))
    if digest:  # Decoded by `decode_row`; the digest makes a resumed run notice a change.
      locations[clip_id] = (hf_split, row)
      clips.append(ClipSpec(clip_id, "", split, labels, source=f"{source} {digest}"))
    elif path:
      path = Path(path).expanduser()
      path = path if path.is_absolute() else (src if src.is_dir() else src.parent) / path
      clips.append(ClipSpec(clip_id, str(path), split, labels, source=source))
    else:
      skipped.append({"source": source, "reason": "no audio (neither bytes nor a path)"})
  return Listing(
      name="hf",
      vocabulary=vocabulary,
      label_type="multi_label" if multi_label else "multi_class",
      clips=clips,
      skipped=skipped,
      extra={"hf_source": str(src), "hf_splits": [s for s in tables if s is not None]},
      synthesize=functools.partial(
          decode_row, src=str(src), audio_column=audio_column, locations=locations,
          sample_rate=sample_rate,
      ),
  )


def decode_row(
    spec: ClipSpec, *, src: str, audio_column: str, locations: dict, sample_rate: int
) -> np.ndarray:
  """The float32 mono audio at `sample_rate` of a row whose audio is embedded bytes."""
  import soundfile as sf

  hf_split, row = locations[spec.clip_id]
  tables, _ = open_tables(src)
  data = tables[hf_split].column(audio_column)[row].as_py()["bytes"]
  try:
    frames, native_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
  except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError.
    reason = f"not audio libsndfile can read: {e}"
    raise audio.AudioError(spec.source, "unsupported_format", reason) from None
  if len(frames) == 0:
    raise audio.AudioError(spec.source, "empty", "decoded no audio frames")
  if not np.isfinite(frames).all():
    raise audio.AudioError(spec.source, "invalid", "contains NaN or infinite samples")
  return audio.resample(audio.mix_to_mono(frames), native_sr, sample_rate)
