"""What every dataset module returns: a listing of clips (where, which split, which labels).

A dataset module only reads its metadata and folder layout and says which audio belongs
where; decoding, resampling and writing are done once for all datasets by
`samplecnn_jax.prepare`. Each module exposes `list_clips(src: Path, **options) -> Listing`,
which raises `LayoutError` (with what was expected where) when the layout is wrong, and
`define_flags(flag_values)`, which makes those options `prepare` flags
(`define_lister_flags`: the lister's defaults are the flags' defaults).
"""

from __future__ import annotations

import dataclasses
import gzip
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from absl import flags

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


def define_lister_flags(
    flag_values: flags.FlagValues,
    lister: Callable[..., Any],
    help_texts: Mapping[str, str],
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
  """Defines a `prepare` flag for each keyword argument of `lister` named in `help_texts`.

  The flag's default is the argument's default, so a command line and a direct call of the
  lister agree; the default's type picks the flag's kind (None: a string), and a name in
  `choices` is an enum of those values.
  """
  parameters = inspect.signature(lister).parameters
  where = {"flag_values": flag_values, "module_name": lister.__module__}  # --help groups.
  for name, help_text in help_texts.items():
    default = parameters[name].default
    if choices and name in choices:
      flags.DEFINE_enum(name, default, list(choices[name]), help_text, **where)
      continue
    define = (flags.DEFINE_bool if isinstance(default, bool)
              else flags.DEFINE_integer if isinstance(default, int)
              else flags.DEFINE_float if isinstance(default, float) else flags.DEFINE_string)
    define(name, default, help_text, **where)


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
  # Classes it is scored on when coarser than `vocabulary` (Speech Commands: 31 -> 12), and
  # each vocabulary index's class there (`store.Manifest` fields of the same names).
  eval_vocabulary: tuple[str, ...] | None = None
  eval_label_map: tuple[int, ...] | None = None
  # For generated data (the demo): returns float32 audio at the target rate for a clip.
  synthesize: Callable[[ClipSpec], np.ndarray] | None = None


def published_listing(
    name: str,
    vocabulary: Sequence[str],
    label_type: str,
    clips: list[ClipSpec],
    skipped: list[dict[str, str]],
    *,
    version: str,
    split_rule: str,
    details: dict[str, Any],
    **fields: Any,
) -> Listing:
  """The listing of a published dataset (MTAT, Speech Commands, DCASE 2017).

  Its manifest fields start with the release (`dataset_version`) and the split protocol
  (`split_rule`), so that every store of such a dataset says which of the papers' setups it
  holds; the dataset's `details` follow. `fields` are further `Listing` fields.
  """
  extra = {"dataset_version": version, "split_rule": split_rule, **details}
  return Listing(name, list(vocabulary), label_type, clips, skipped, extra, **fields)
