"""What every dataset module returns: a listing of clips (where, which split, which labels).

A dataset module only reads its metadata and folder layout and says which audio belongs
where; decoding, resampling and writing are done once for all datasets by
`samplecnn_jax.prepare`. Each module exposes `list_clips(src: Path, **options) -> Listing`
and raises `LayoutError` (with what was expected where) when the layout is wrong.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

# How a clip's labels are read: several tags each (sigmoid) or exactly one class (softmax).
LABEL_TYPES = ("multi_label", "multi_class")


class LayoutError(ValueError):
  """The raw dataset folder does not have the expected files or layout."""


def open_maybe_gz(path: Path, binary: bool = False) -> IO:
  """Opens a metadata file, decompressing it when its name ends in `.gz`.

  Downloads ship some metadata gzipped; text mode is csv-ready (utf-8, `newline=""`).
  """
  opener = gzip.open if path.name.endswith(".gz") else open
  return opener(path, "rb") if binary else opener(path, "rt", encoding="utf-8", newline="")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """One clip to prepare."""

  clip_id: str  # Unique within the dataset; becomes the record's clip_id.
  path: str  # Absolute path of the audio file ('' for synthesised clips).
  split: str  # train | valid | test | background_noise | ...
  labels: tuple[int, ...]  # Class indices into Listing.vocabulary.
  offset: float = 0.0  # Seconds into the file where the clip starts.
  duration: float | None = None  # Seconds to read; None = to the end of the file.
  source: str = ""  # Path relative to the raw folder, for reports and records.


@dataclasses.dataclass
class Listing:
  """A dataset's clips and label vocabulary, ready for `prepare`."""

  name: str  # Dataset name, as given to `prepare`.
  vocabulary: list[str]  # Class names; label indices point into this list.
  label_type: str  # multi_label | multi_class.
  clips: list[ClipSpec]  # Every clip, all splits.
  skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {source, reason}.
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # More manifest fields.
  # For generated data (the demo): returns float32 audio at the target rate for a clip.
  synthesize: Callable[[ClipSpec], np.ndarray] | None = None
