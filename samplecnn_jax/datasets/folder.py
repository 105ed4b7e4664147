"""Your own data: a folder with one sub-folder per class, or a CSV of paths and labels.

`folder` (`list_folder`): SRC/<class>/**/<audio>, multi-class; or, when SRC has split
folders, SRC/{train,valid,test}/<class>/**/<audio> (`val`/`validation` mean `valid`).
`csv` (`list_csv`): SRC is a CSV file, or a folder holding exactly one `*.csv`, with the
header `path,label[,split]`; `label` may hold several labels separated by `;` (then the
data is multi-label), paths are absolute or relative to the CSV's folder. Without split
folders or a split column, each file goes to a split by a hash of its path (stable across
runs and machines, and a file keeps its split when others are added). Audio may have any
sample rate and channel count: `prepare` resamples and mixes to mono. This module only
lists files; it does not open them.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

from absl import flags

from samplecnn_jax.audio import AUDIO_EXTENSIONS
from samplecnn_jax.datasets import common
from samplecnn_jax.datasets.common import ClipSpec, LayoutError, Listing

# Split folder names / split column values, and the split they mean.
SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
CSV_LABEL_TYPES = ("auto", "multi_class", "multi_label")  # `prepare csv --label_type`.
CSV_HEADER_HELP = "a header row `path,label` or `path,label,split`"


def define_folder_flags(flag_values: flags.FlagValues) -> None:
  """The `prepare folder` flags: the shares of files hashed into valid and test."""
  common.define_lister_flags(flag_values, list_folder, {
      f"{split}_fraction": f"Share of files hashed into '{split}' when there are no split "
                           "folders/column, in [0, 1)." for split in ("valid", "test")
  })
  for name in ("valid_fraction", "test_fraction"):
    flags.register_validator(name, lambda value: 0.0 <= value < 1.0, "must be in [0, 1)",
                             flag_values=flag_values)


def define_csv_flags(flag_values: flags.FlagValues) -> None:
  """The `prepare csv` flags: those of `folder`, and the label type."""
  define_folder_flags(flag_values)
  common.define_lister_flags(flag_values, list_csv, {
      "label_type": "auto: multi_label if any row has several ';'-separated labels, else "
                    "multi_class.",
  }, choices={"label_type": CSV_LABEL_TYPES})


def hash_split(key: str, valid_fraction: float, test_fraction: float) -> str:
  """'train', 'valid' or 'test' from a hash of `key`: stable, independent of other files."""
  if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
    raise ValueError(
        f"need valid and test fractions >= 0 with a sum < 1, got {valid_fraction} + "
        f"{test_fraction}"
    )
  # surrogateescape: a name that is not valid UTF-8 hashes as its file-system bytes.
  digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
  unit = int.from_bytes(digest[:8], "big") / 2.0**64
  if unit < test_fraction:
    return "test"
  if unit < test_fraction + valid_fraction:
    return "valid"
  return "train"


def _is_audio(path: Path) -> bool:
  return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def _audio_files(folder: Path) -> list[Path]:
  """Audio files under `folder` (recursively, hidden folders skipped), sorted."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found.extend(Path(root) / name for name in files if _is_audio(Path(root) / name))
  return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _broken_links(folder: Path) -> list[Path]:
  """Symbolic links in `folder` whose target does not exist (reported, never dropped)."""
  return sorted(p for p in folder.iterdir() if p.is_symlink() and not p.exists())


def _check_src(src: Path) -> Path:
  src = Path(src).expanduser().resolve()
  if not src.exists():
    raise LayoutError(f"{src} does not exist; pass the raw data folder with --src")
  return src


def list_folder(
    src: Path, *, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> Listing:
  """Lists SRC/<class>/... (hash split) or SRC/<split>/<class>/... as a multi-class dataset."""
  src = _check_src(src)
  if not src.is_dir():
    raise LayoutError(f"{src} is not a folder; `folder` expects SRC/<class>/<audio files>")
  folders = _subfolders(src)
  split_folders = [p for p in folders if p.name.lower() in SPLIT_ALIASES]
  if split_folders and len(split_folders) != len(folders):
    others = ", ".join(p.name for p in folders if p not in split_folders)
    raise LayoutError(
        f"{src} mixes split folders ({', '.join(p.name for p in split_folders)}) with other "
        f"folders ({others}); put every class folder under train/valid/test, or use no split "
        "folders at all"
    )
  if split_folders:
    roots = [(SPLIT_ALIASES[p.name.lower()], p) for p in split_folders]
    if len({split for split, _ in roots}) != len(roots):
      raise LayoutError(f"{src} has two folders for the same split: {[p.name for _, p in roots]}")
  else:
    roots = [(None, src)]

  files: list[tuple[str | None, str, Path]] = []  # (split, class name, file)
  skipped = []
  for split, root in roots:
    class_folders = _subfolders(root)
    loose = [p for p in root.iterdir() if p.is_file() and _is_audio(p)]
    if not class_folders:
      raise LayoutError(
          f"expected one sub-folder per class in {root}, found "
          + (f"{len(loose)} audio files directly in it" if loose else "no audio files")
          + " and no sub-folders"
      )
    for path in sorted(loose):
      skipped.append(
          {"source": path.relative_to(src).as_posix(), "reason": "not inside a class folder"}
      )
    for path in _broken_links(root):  # Links in a class folder are listed and fail to decode.
      target = os.fsdecode(os.readlink(path))
      skipped.append({"source": path.relative_to(src).as_posix(),
                      "reason": f"broken symbolic link: it points to {target}, which does not exist"})
    for folder in class_folders:
      audio = _audio_files(folder)
      if not audio:
        skipped.append(
            {"source": folder.relative_to(src).as_posix() + "/", "reason": "no audio files"}
        )
      files.extend((split, folder.name, path) for path in audio)
  if not files:
    raise LayoutError(
        f"expected one sub-folder per class in {src}, found no audio files "
        f"(extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})"
    )

  vocabulary = sorted({name for _, name, _ in files})
  index = {name: i for i, name in enumerate(vocabulary)}
  clips = []
  for split, name, path in files:
    source = path.relative_to(src).as_posix()
    split = split or hash_split(source, valid_fraction, test_fraction)
    clips.append(ClipSpec(source, str(path), split, (index[name],), source=source))
  method = "folders" if split_folders else "hash"
  return Listing(
      name="folder",
      vocabulary=vocabulary,
      label_type="multi_class",
      clips=clips,
      skipped=skipped,
      extra=_split_info(method, valid_fraction, test_fraction),
  )


def _split_info(method: str, valid_fraction: float, test_fraction: float) -> dict:
  """Manifest fields saying how splits were made (fractions only when hashing was used)."""
  info = {"split_method": method}
  if "hash" in method:
    info.update(valid_fraction=valid_fraction, test_fraction=test_fraction)
  return info


def _find_csv(src: Path) -> Path:
  if src.is_file():
    return src
  found = sorted(p for p in src.glob("*.csv") if p.is_file())
  if len(found) != 1:
    names = ", ".join(p.name for p in found) or "none"
    raise LayoutError(
        f"`csv` expects --src to be a CSV file or a folder with exactly one *.csv; {src} has "
        f"{len(found)} ({names}); pass the file itself"
    )
  return found[0]


def _read_rows(path: Path) -> list[dict[str, str]]:
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = [(name or "").strip().lower() for name in reader.fieldnames or []]
      if "path" not in header or "label" not in header:
        raise LayoutError(f"{path} needs {CSV_HEADER_HELP}; its first row is {header}")
      reader.fieldnames = header
      return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
  except UnicodeDecodeError as e:
    raise LayoutError(f"{path} is not UTF-8 text ({e}); save the CSV as UTF-8") from None


def _labels(cell: str) -> list[str]:
  return sorted({part.strip() for part in cell.split(";") if part.strip()})


def list_csv(
    src: Path,
    *,
    label_type: str = "auto",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Listing:
  """Lists the files of a `path,label[,split]` CSV (labels `a;b` make it multi-label)."""
  if label_type not in CSV_LABEL_TYPES:
    raise ValueError(f"label_type must be one of {CSV_LABEL_TYPES}, got {label_type!r}")
  csv_path = _find_csv(_check_src(src))
  root = csv_path.parent
  rows = _read_rows(csv_path)
  if not rows:
    raise LayoutError(f"{csv_path} has a header but no rows")

  parsed = [(line, row, _labels(row.get("label", ""))) for line, row in enumerate(rows, 2)]
  if label_type == "auto":
    label_type = "multi_label" if any(len(labels) > 1 for _, _, labels in parsed) else "multi_class"
  if label_type == "multi_class":
    for line, row, labels in parsed:
      if len(labels) > 1:
        raise LayoutError(
            f"{csv_path} line {line} has {len(labels)} labels ({row['label']}) but the label "
            "type is multi_class; use --label_type multi_label or give one label per row"
        )

  skipped, seen, kept = [], {}, []
  for line, row, labels in parsed:
    written = row.get("path", "")
    if not written:
      skipped.append({"source": f"{csv_path.name}:{line}", "reason": "empty path"})
      continue
    path = Path(written).expanduser()
    path = path if path.is_absolute() else root / path
    source = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    if source in seen:
      skipped.append({"source": source, "reason": f"duplicate of line {seen[source]}"})
      continue
    seen[source] = line
    if not labels and label_type == "multi_class":
      skipped.append({"source": source, "reason": f"line {line} has no label"})
      continue
    split = row.get("split", "")
    split = SPLIT_ALIASES.get(split.lower(), split) if split else None
    kept.append((source, path, labels, split))
  if not kept:
    raise LayoutError(f"{csv_path} lists no usable files (see the reasons in report.json)")

  vocabulary = sorted({label for _, _, labels, _ in kept for label in labels})
  if not vocabulary:
    raise LayoutError(f"{csv_path} has no labels in its `label` column")
  index = {name: i for i, name in enumerate(vocabulary)}
  clips = []
  for source, path, labels, split in kept:
    split = split or hash_split(source, valid_fraction, test_fraction)
    clips.append(
        ClipSpec(source, str(path), split, tuple(index[x] for x in labels), source=source)
    )
  method = "column" if all(split for *_, split in kept) else "hash"
  if method == "hash" and any(split for *_, split in kept):
    method = "column+hash"
  return Listing(
      name="csv",
      vocabulary=vocabulary,
      label_type=label_type,
      clips=clips,
      skipped=skipped,
      extra={"csv": str(csv_path), **_split_info(method, valid_fraction, test_fraction)},
  )
