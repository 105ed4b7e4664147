"""Turns a raw dataset into the prepared store: decode, resample, write shards, report.

  python -m samplecnn_jax.prepare demo --out prepared/demo
  python -m samplecnn_jax.prepare folder --src my_sounds/ --out prepared/my_sounds
  python -m samplecnn_jax.prepare DATASET --src RAW_DIR --out PREPARED_DIR [--workers N]
  python -m samplecnn_jax.prepare DATASET --help    # the common flags and DATASET's own

Each dataset module lists its clips (`datasets.get_lister`); this module decodes them in
parallel (one process per core), writes int16 clips at `--sample_rate` to fixed-size
ArrayRecord shards in a deterministic order, and writes `clip_lengths.npy` per split,
`report.json` and, last, the `store.Manifest` (`manifest.json`; layout in `store.py`).
`prepare(...)` is the engine (a notebook calls it); `main` is the command (`cli.run`): exit
0 when the store is written, 1 when decoding left it unusable (below), 2 for a usage or
layout error (nothing decoded), each error in one line.

Bad audio never stops the job: missing, empty, unreadable, truncated and wrong-format files
are skipped and listed in report.json with the reason; silent files are kept (they are valid
audio) and listed as warnings. But a run whose skips leave a split or a class with no clip
fails (`UnusableStoreError`, exit 1, report.json written, no manifest), and a class with few
train clips is a warning that names it. An interrupted run resumes: a shard whose file and sidecar
`OUT/.prepare/<shard>.json` exist and match is kept, so re-running gives the same bytes as
an uninterrupted run. This module knows no dataset layout and does no training-time I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from samplecnn_jax import __version__, audio, cli, datasets, store
from samplecnn_jax.datasets.common import LABEL_TYPES, ClipSpec, LayoutError, Listing

DEFAULT_SHARD_SIZE = 512  # Clips per shard (about 16 MB of 1-s clips, 470 MB of 29-s clips).
PROGRESS_DIR = ".prepare"  # Per-shard sidecars that make a run resumable.
PREPARE_VERSION = 1  # Bump when the bytes of a prepared clip change, to void old sidecars.
SPLIT_ORDER = ("train", "valid", "test")  # Manifest order; other splits follow as listed.
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_CLASS_CLIPS = 5  # Fewer written train clips than this: a warning that names the class.


class UnusableStoreError(RuntimeError):
  """Decoding left a split or a class with no clip: the store is not finished (no manifest);
  report.json has every skip reason and `counts` (exit status 1 from the CLI)."""


# --- One clip ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClipResult:
  """What became of one clip: int16 audio, or the problem that made us skip it."""

  clip_id: str
  audio: np.ndarray | None  # int16 mono at the target rate; None when skipped.
  kind: str = ""  # AudioError kind when skipped, 'silent' for a warning.
  reason: str = ""  # Why it was skipped / what the warning is about.


def prepare_clip(
    spec: ClipSpec, sample_rate: int, synthesize: Callable[[ClipSpec], np.ndarray] | None = None
) -> ClipResult:
  """Decodes (or synthesises) one clip to int16 at `sample_rate`; bad audio is a result."""
  try:
    if not spec.path and synthesize is not None:
      waveform = np.asarray(synthesize(spec), dtype=np.float32)
    else:
      waveform = audio.load_audio(spec.path, sample_rate, spec.offset, spec.duration)
  except audio.AudioError as e:
    return ClipResult(spec.clip_id, None, e.kind, e.reason)
  pcm = audio.to_int16(waveform)
  if pcm.ndim != 1 or pcm.size == 0:
    return ClipResult(spec.clip_id, None, "empty", f"no samples (shape {pcm.shape})")
  if not pcm.any():
    return ClipResult(spec.clip_id, pcm, "silent", "silent: every sample is 0 (kept)")
  return ClipResult(spec.clip_id, pcm)


_worker_state: dict[str, Any] = {}


def _init_worker(sample_rate: int, synthesize) -> None:
  _worker_state.update(sample_rate=sample_rate, synthesize=synthesize)


def _worker_prepare_clip(spec: ClipSpec) -> ClipResult:
  return prepare_clip(spec, _worker_state["sample_rate"], _worker_state["synthesize"])


# --- Shards and their sidecars ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shard:
  """A fixed chunk of a split's clips; its clips are known before anything is decoded."""

  split: str
  index: int
  clips: tuple[ClipSpec, ...]

  @property
  def name(self) -> str:
    return f"{self.split}-{self.index:05d}"

  @property
  def path(self) -> str:
    """Relative to the prepared folder, as listed in the manifest."""
    return f"{self.split}/{self.name}{store.SHARD_SUFFIX}"


def plan_shards(clips: list[ClipSpec], shard_size: int) -> dict[str, list[Shard]]:
  """Splits (train, valid, test, then others as first listed) -> shards of clips by clip_id."""
  by_split: dict[str, list[ClipSpec]] = {}
  for clip in clips:
    by_split.setdefault(clip.split, []).append(clip)
  first = list(by_split)
  rank = {split: (SPLIT_ORDER + (split,)).index(split) for split in first}
  plan = {}
  for split in sorted(first, key=lambda split: (rank[split], first.index(split))):
    members = sorted(by_split[split], key=lambda clip: clip.clip_id)
    plan[split] = [
        Shard(split, i // shard_size, tuple(members[i : i + shard_size]))
        for i in range(0, len(members), shard_size)
    ]
  return plan


def _file_state(path: str) -> list[int] | None:
  """Size, modification time and mode of a clip's file (None when it cannot be stat'ed): a
  file fixed, replaced or made readable since a run reported it changes its shard's
  fingerprint, so the next run reads it again."""
  if not path:
    return None
  try:
    info = os.stat(path)
  except OSError:
    return None
  return [info.st_size, info.st_mtime_ns, info.st_mode]


def _fingerprint(shard: Shard, context: list) -> str:
  """Hash of everything that decides a shard's bytes (its clips and their files' size and
  mtime, rate, options, versions)."""
  specs = [[*dataclasses.astuple(clip), _file_state(clip.path)] for clip in shard.clips]
  text = json.dumps([PREPARE_VERSION, store.FORMAT_VERSION, context, specs], default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def _sidecar(out: Path, shard: Shard) -> Path:
  return out / PROGRESS_DIR / f"{shard.name}.json"


def _finished_shard(out: Path, shard: Shard, fingerprint: str) -> dict | None:
  """The sidecar of a shard finished by an earlier run with the same inputs, else None."""
  try:
    info = json.loads(_sidecar(out, shard).read_text())
    if info["fingerprint"] != fingerprint:
      return None
    if info["num_records"]:
      path = out / shard.path
      if not path.is_file() or path.stat().st_size != info["bytes"]:
        return None
  except (OSError, ValueError, KeyError, TypeError):  # Missing or damaged sidecar: redo.
    return None
  return info


def _write_shard(
    out: Path, shard: Shard, fingerprint: str, results: Iterator[ClipResult], on_clip: Callable
) -> dict:
  """Writes one shard from the next results, then its sidecar; returns the sidecar."""
  lengths, skipped, warnings = [], [], []

  def records():
    for spec in shard.clips:
      result = next(results)
      assert result.clip_id == spec.clip_id, (result.clip_id, spec.clip_id)
      on_clip()
      entry = {"clip_id": spec.clip_id, "source": spec.source or spec.path, "split": spec.split}
      if result.audio is None:
        skipped.append({**entry, "kind": result.kind, "reason": result.reason})
        continue
      if result.kind:
        warnings.append({**entry, "kind": result.kind, "reason": result.reason})
      lengths.append(len(result.audio))
      yield store.encode_clip(spec.clip_id, result.audio, spec.labels, spec.source)

  path = out / shard.path
  count = store.write_shard(path, records())
  if count == 0:
    path.unlink()
  info = {
      "fingerprint": fingerprint,
      "shard": shard.path if count else None,
      "num_records": count,
      "bytes": path.stat().st_size if count else 0,
      "clip_lengths": lengths,
      "skipped": skipped,
      "warnings": warnings,
  }
  store.write_json(_sidecar(out, shard), info)
  return info


def _write_npy(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)


def _remove_stale_files(out: Path, plan: dict[str, list[Shard]]) -> None:
  """Deletes `.tmp` leftovers and shards/sidecars of earlier runs that this plan has not."""
  keep = {shard.name for shards in plan.values() for shard in shards}
  for split in plan:
    shard_name = re.compile(rf"^({re.escape(split)}-\d{{5}}){re.escape(store.SHARD_SUFFIX)}$")
    for path in (out / split).iterdir():
      match = shard_name.match(path.name.removesuffix(".tmp"))
      if path.name.endswith(".tmp") or (match and match.group(1) not in keep):
        path.unlink()
  for path in (out / PROGRESS_DIR).iterdir():
    if path.name.endswith(".tmp") or path.name.removesuffix(".json") not in keep:
      path.unlink()
  for path in out.glob("*.tmp"):
    path.unlink()


# --- The job ----------------------------------------------------------------------------


def default_workers() -> int:
  """Cores this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _list_clips(name: str, src: Path | None, sample_rate: int, options: dict) -> Listing:
  module = datasets.get_module(name)
  lister = datasets.get_lister(name)
  if src is None and getattr(module, "NEEDS_SOURCE", True):
    raise LayoutError(f"dataset {name!r} needs --src: the folder of the raw download")
  if src is not None and not src.exists():
    raise LayoutError(f"--src {src} does not exist")
  if "sample_rate" in inspect.signature(lister).parameters:
    options = {**options, "sample_rate": sample_rate}
  try:
    return lister(src, **options)
  except LayoutError:
    raise
  except (ValueError, TypeError) as e:  # Bad options for this dataset.
    raise LayoutError(f"{name}: {e}") from e


def _check_listing(listing: Listing) -> None:
  """Catches listing mistakes before hours of decoding (bugs and bad metadata alike)."""
  if listing.label_type not in LABEL_TYPES:
    raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {listing.label_type!r}")
  if not listing.vocabulary or len(set(listing.vocabulary)) != len(listing.vocabulary):
    raise ValueError(f"vocabulary must be non-empty and unique, got {listing.vocabulary[:10]}")
  if not listing.clips:
    raise LayoutError(f"{listing.name}: no clips to prepare (skipped: {len(listing.skipped)})")
  seen = set()
  for clip in listing.clips:
    if clip.clip_id in seen:
      raise ValueError(f"clip_id {clip.clip_id!r} is listed twice")
    seen.add(clip.clip_id)
    if not _SPLIT_NAME.match(clip.split):
      raise LayoutError(f"split name {clip.split!r} ({clip.clip_id}): use letters, digits, _-.")
    if any(not 0 <= label < len(listing.vocabulary) for label in clip.labels):
      raise ValueError(f"{clip.clip_id} has labels {clip.labels} outside the vocabulary")
    if listing.label_type == "multi_class" and len(clip.labels) != 1:
      raise ValueError(f"multi_class clip {clip.clip_id} has labels {clip.labels}")
    if not clip.path and listing.synthesize is None:
      raise ValueError(f"clip {clip.clip_id} has no path and the listing cannot synthesise it")


def _json_safe(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def prepare(
    name: str,
    src: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    min_class_clips: int = MIN_CLASS_CLIPS,
    **options: Any,
) -> store.Manifest:
  """Prepares dataset `name` from `src` into `out` and returns its manifest.

  Args:
    name: a key of `datasets.DATASETS`.
    src: the raw dataset folder (or file, for `csv`); None for `demo`.
    out: the prepared folder; re-running into it resumes (finished shards are kept).
    sample_rate: rate of the stored audio, Hz.
    workers: decoding processes; None = one per core; <= 1 decodes in this process.
    shard_size: clips per shard.
    progress: show a tqdm progress bar on stderr.
    min_class_clips: a class with fewer written train clips is a warning (report.json
      `class_warnings`, naming it).
    **options: the dataset's own options, passed to its lister.

  Raises:
    LayoutError: missing metadata, wrong layout or bad options (message says what to fix).
    UnusableStoreError: a split or a class lost every clip to skipping; report.json is
      written (every reason, and the counts), the manifest is not.
  """
  if sample_rate <= 0 or shard_size <= 0:
    raise ValueError(f"sample_rate and shard_size must be > 0, got {sample_rate}, {shard_size}")
  src = Path(src).expanduser().resolve() if src is not None else None
  out = Path(out).expanduser().resolve()
  listing = _list_clips(name, src, sample_rate, options)
  _check_listing(listing)

  out.mkdir(parents=True, exist_ok=True)
  (out / store.MANIFEST).unlink(missing_ok=True)  # Not a finished store until the end.
  (out / PROGRESS_DIR).mkdir(exist_ok=True)
  plan = plan_shards(listing.clips, shard_size)
  context = [name, sample_rate, _json_safe(options)]
  shards = [shard for split_shards in plan.values() for shard in split_shards]
  fingerprints = {shard.name: _fingerprint(shard, context) for shard in shards}
  infos = {shard.name: _finished_shard(out, shard, fingerprints[shard.name]) for shard in shards}
  todo = [shard for shard in shards if infos[shard.name] is None]
  tasks = [spec for shard in todo for spec in shard.clips]

  from tqdm import tqdm

  workers = min(default_workers() if workers is None else workers, max(len(tasks), 1))
  total = len(listing.clips)
  with contextlib.ExitStack() as stack:
    bar = stack.enter_context(
        tqdm(total=total, initial=total - len(tasks), unit="clip", desc=f"prepare {name}",
             disable=not progress, dynamic_ncols=True)  # fmt: skip
    )
    if workers <= 1:
      results = (prepare_clip(spec, sample_rate, listing.synthesize) for spec in tasks)
    else:
      pool = stack.enter_context(
          multiprocessing.get_context("spawn").Pool(
              workers, initializer=_init_worker, initargs=(sample_rate, listing.synthesize)
          )
      )
      chunksize = max(1, min(32, len(tasks) // (workers * 16)))
      results = pool.imap(_worker_prepare_clip, tasks, chunksize=chunksize)
    for shard in todo:
      infos[shard.name] = _write_shard(
          out, shard, fingerprints[shard.name], results, lambda: bar.update(1)
      )

  for split in plan:
    (out / split).mkdir(exist_ok=True)
  _remove_stale_files(out, plan)
  report = _report(name, src, sample_rate, listing, plan, infos)
  report.update(_check_counts(listing, plan, infos, min_class_clips))
  # The count the summary line prints: silent clips, and the class and split warnings too.
  report["num_warnings"] = sum(len(report[key]) for key in
                               ("warnings", "class_warnings", "split_warnings"))
  if report["errors"]:
    store.write_json(out / store.REPORT, report)  # Every reason is kept; no manifest.
    raise UnusableStoreError(_unusable_message(name, out, report))
  manifest = store.Manifest(
      sample_rate=sample_rate,
      label_type=listing.label_type,
      vocabulary=tuple(listing.vocabulary),
      splits=_split_infos(plan, infos),
      dataset=name,
      source=str(src) if src else None,
      created_by=f"samplecnn_jax {__version__}",
      options=_json_safe(options),
      shard_size=shard_size,
      skipped=report["num_skipped"],
      warnings=report["num_warnings"],
      eval_vocabulary=listing.eval_vocabulary,
      eval_label_map=listing.eval_label_map,
      extra=_json_safe(listing.extra),
  )
  for split, split_shards in plan.items():
    lengths = [n for shard in split_shards for n in infos[shard.name]["clip_lengths"]]
    _write_npy(out / split / store.CLIP_LENGTHS, np.asarray(lengths, dtype=np.int64))
  store.write_json(out / store.REPORT, report)
  manifest.write(out)  # Last: marks the store as finished.
  return manifest


def _report(name, src, sample_rate, listing, plan, infos) -> dict[str, Any]:
  skipped = [{"kind": "metadata", **entry} for entry in listing.skipped]
  warnings = []
  for split_shards in plan.values():
    for shard in split_shards:
      skipped += infos[shard.name]["skipped"]
      warnings += infos[shard.name]["warnings"]
  by_kind: dict[str, int] = {}
  for entry in skipped:
    by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + 1
  return {
      "dataset": name,
      "source": str(src) if src else None,
      "sample_rate": sample_rate,
      "num_listed": len(listing.clips),
      "num_written": sum(info["num_records"] for info in infos.values()),
      "num_skipped": len(skipped),
      "num_warnings": len(warnings),
      "skipped_by_kind": dict(sorted(by_kind.items())),
      "skipped": skipped,
      "warnings": warnings,
  }


def _check_counts(listing, plan, infos, min_class_clips: int) -> dict[str, Any]:
  """Clips listed and written per split and per class, and what they make unusable.

  `errors`: a split that lost every clip, a class that lost every file (fatal: training on
  such a store would silently lack them). `class_warnings`: a class with fewer than
  `min_class_clips` written train clips, or none left in a split where it had some.
  `split_warnings`: train, valid or test is missing (training needs all three).
  """
  vocabulary = listing.vocabulary
  splits: dict[str, dict[str, int]] = {}
  classes = {name: {"listed": {}, "written": {}} for name in vocabulary}
  for split, split_shards in plan.items():
    splits[split] = {"listed": 0, "written": 0}
    for shard in split_shards:
      skipped = {entry["clip_id"] for entry in infos[shard.name]["skipped"]}
      for clip in shard.clips:
        written = clip.clip_id not in skipped
        splits[split]["listed"] += 1
        splits[split]["written"] += written
        for label in clip.labels:
          counts = classes[vocabulary[label]]
          counts["listed"][split] = counts["listed"].get(split, 0) + 1
          counts["written"][split] = counts["written"].get(split, 0) + written
  errors, warnings, split_warnings = [], [], []
  for split in ("train", "valid", "test"):
    if split not in plan:
      split_warnings.append(
          f"the store has no {split!r} split (it has: {', '.join(sorted(plan))}); training "
          f"refuses it unless --config.{'eval' if split == 'valid' else split}_split names "
          f"another split. Give rows split={split} (prepare csv) or set the split fractions "
          f"(prepare folder: --valid_fraction/--test_fraction)")
  for split, count in splits.items():
    if count["written"] == 0:
      errors.append(f"split {split!r}: none of its {count['listed']} clips could be read")
  for name, count in classes.items():
    listed, written = sum(count["listed"].values()), sum(count["written"].values())
    if listed and not written:
      errors.append(f"class {name!r}: every one of its {listed} files was skipped")
      continue
    if not listed:
      continue
    lost = [split for split, n in count["listed"].items() if n and not count["written"][split]]
    train = count["written"].get("train", 0)
    if "train" in plan and train < min_class_clips:
      warnings.append(f"class {name!r} has only {train} train clips (fewer than "
                      f"{min_class_clips}); written per split: {count['written']}")
    elif lost:
      warnings.append(f"class {name!r} has no clip left in {', '.join(lost)} (all skipped); "
                      f"written per split: {count['written']}")
  return {"counts": {"splits": splits, "classes": classes}, "errors": errors,
          "class_warnings": warnings, "split_warnings": split_warnings}


def _unusable_message(name: str, out: Path, report: dict[str, Any]) -> str:
  splits = ", ".join(f"{split} {c['written']}/{c['listed']}"
                     for split, c in report["counts"]["splits"].items())
  kinds = ", ".join(f"{kind} {n}" for kind, n in report["skipped_by_kind"].items()) or "none"
  return (
      f"{name}: the prepared store would be unusable: " + "; ".join(report["errors"])
      + f". Clips written/listed per split: {splits}; skipped {report['num_skipped']} "
      f"({kinds}). Every reason is in {out / store.REPORT}; fix or remove those files and "
      "run again (finished shards are kept)."
  )


def _split_infos(plan, infos) -> dict[str, store.SplitInfo]:
  splits = {}
  for split, split_shards in plan.items():
    split_infos = [infos[shard.name] for shard in split_shards]
    splits[split] = store.SplitInfo(
        num_clips=sum(info["num_records"] for info in split_infos),
        num_samples=sum(sum(info["clip_lengths"]) for info in split_infos),
        shards=tuple(info["shard"] for info in split_infos if info["shard"]),
        clip_lengths=f"{split}/{store.CLIP_LENGTHS}",
    )
  return splits


# --- Command line -----------------------------------------------------------------------

PROG = "python -m samplecnn_jax.prepare"
_COMMON_FLAGS = ("src", "out", "workers", "sample_rate", "shard_size", "quiet", "min_class_clips")


def _define_flags(flag_values: flags.FlagValues, dataset: str | None) -> None:
  """The flags every dataset has, then `dataset`'s own (its module's flag definer)."""
  def define(kind, name, default, help_text, **kwargs):  # Grouped so in --help, not __main__.
    kind(name, default, help_text, flag_values=flag_values, module_name="samplecnn_jax.prepare",
         **kwargs)

  define(flags.DEFINE_string, "src", None, "Raw dataset folder (for csv: the CSV file); not "
         "for demo.")
  define(flags.DEFINE_string, "out", None, "Prepared folder to write (required).")
  define(flags.DEFINE_integer, "workers", None, "Decoding processes (default: one per core).")
  define(flags.DEFINE_integer, "sample_rate", 16000, "Stored sample rate, Hz.", lower_bound=1)
  define(flags.DEFINE_integer, "shard_size", DEFAULT_SHARD_SIZE, "Clips per shard.",
         lower_bound=1)
  define(flags.DEFINE_bool, "quiet", False, "No progress bar.")
  define(flags.DEFINE_integer, "min_class_clips", MIN_CLASS_CLIPS,
         "Warn about classes with fewer written train clips than this.")
  if dataset is not None:
    datasets.get_flag_definer(dataset)(flag_values)


def _command(dataset: str, flag_values: flags.FlagValues, _: list[str]) -> int:
  if flag_values["out"].value is None:
    raise cli.UsageError(f"--out is missing: name the prepared folder to write, e.g. "
                         f"`{PROG} {dataset} --out prepared/{dataset}`")
  common = {*_COMMON_FLAGS, "verbose"}
  options = {name: flag_values[name].value for name in flag_values if name not in common}
  src = flag_values["src"].value
  out = Path(flag_values["out"].value)
  try:
    manifest = prepare(
        dataset,
        None if src is None else Path(src),
        out,
        sample_rate=flag_values["sample_rate"].value,
        workers=flag_values["workers"].value,
        shard_size=flag_values["shard_size"].value,
        progress=not flag_values["quiet"].value,
        min_class_clips=flag_values["min_class_clips"].value,
        **options,
    )
  except UnusableStoreError as e:  # Decoded and reported, but no usable store.
    print(f"{PROG} {dataset}: error: {e}", file=sys.stderr)
    return cli.EXIT_SOME_FAILED
  for split, info in manifest.splits.items():
    seconds = info.num_samples / manifest.sample_rate
    print(f"{split}: {info.num_clips} clips, {seconds / 3600:.2f} h, {len(info.shards)} shards")
  report = json.loads((out / store.REPORT).read_text())
  for warning in report.get("split_warnings", []) + report.get("class_warnings", []):
    print(f"prepare {dataset}: warning: {warning}", file=sys.stderr)
  print(
      f"skipped {manifest.skipped}, warnings {manifest.warnings} "
      f"(details in {out / store.REPORT}); store: {out / store.MANIFEST}"
  )
  return cli.EXIT_DONE


def main(argv: list[str] | None = None) -> int:
  """`python -m samplecnn_jax.prepare DATASET --out OUT [--src RAW] [flags]`.

  The dataset comes first, so that only its module is imported and only its flags are
  defined (`prepare demo --help` lists demo's). Exit codes: 0 the store is written (skipped
  files are listed in report.json), 1 decoding left a split or a class with no clip (report
  written, no manifest), 2 a usage or layout error (nothing decoded).
  """
  argv = list(sys.argv if argv is None else argv)
  names = ", ".join(datasets.DATASETS)
  dataset = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
  if dataset is None:
    if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
      code = cli.run(f"{PROG} DATASET", functools.partial(_define_flags, dataset=None),
                     lambda *_: None, argv)
      print(f"DATASET is one of {names}; `{PROG} DATASET --help` adds its own flags.")
      return code
    return _usage_error(f"name the dataset first: `{PROG} DATASET --out OUT [--src RAW]`, "
                        f"DATASET one of {names}")
  if dataset not in datasets.DATASETS:
    return _usage_error(f"unknown dataset {dataset!r}. Valid datasets: {names} "
                        f"(`{PROG} DATASET --help` lists a dataset's flags)")
  return cli.run(f"{PROG} {dataset}", functools.partial(_define_flags, dataset=dataset),
                 functools.partial(_command, dataset), [argv[0], *argv[2:]])


def _usage_error(message: str) -> int:
  print(f"{PROG}: error: {message}.", file=sys.stderr)
  return cli.EXIT_USAGE


if __name__ == "__main__":
  sys.exit(main())
