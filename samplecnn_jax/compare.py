"""Runs and baselines set against each other on the same clips, with paired bootstrap intervals.

  python -m samplecnn_jax.compare A B [C ...] [--split=test] [--metric=auto] \
      [--resamples=1000] [--seed=0] [--output=comparison.json]

Each argument is a training workdir (its `predictions_<split>.npz`), a `baseline` output folder
(one entry per model, from its `baseline_<split>.json` and `predictions_<split>_<model>.npz`;
`FOLDER:logmel+lr` picks one model), or several of these joined by commas, `A1,A2,A3`: the
seeds of one recipe as one entry.

For every entry: its metric, recomputed from the clip scores, with a 95% percentile bootstrap
interval over clips; for every entry after the first: the difference to the first and the
paired interval of that difference (every resample draws the same clips for both, so what
the two share, such as hard clips, cancels out), with a verdict: "B is better by 4.1 points,
95% CI 1.2-7.0" when the interval excludes 0, else "no clear difference". A group of seeds
scores the mean of its seeds' metrics, each seed on the same resampled clips: the expected
metric of one run of the recipe (not of an ensemble of the seeds, which would score higher),
and its interval covers the clips, while the spread over seeds is reported beside it. See
docs/reporting.md.

The engine is `load_entries` + `compare` (returns a `Comparison`, for notebooks and tests);
`main(argv)` is the command (`cli.run`): it prints the table and verdicts and writes JSON
(`--output`). Exit 0 done, 2 a usage error or entries that do not score the same clips of
the same store (one line naming the difference). Nothing here trains, evaluates or reads a
store: only the predictions files that evaluations wrote.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from samplecnn_jax import cli, metrics, store, workdir_files
from samplecnn_jax.workdir_files import Predictions

PROG = "python -m samplecnn_jax.compare"
METRIC_CHOICES = ("auto", *metrics.METRICS)  # auto: the metric the first entry's run used.


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
  """One row of a comparison: a run, a baseline model, or a group of seeds of either."""

  name: str  # As the table and the verdicts call it.
  sources: tuple[str, ...]  # Each seed's folder (`FOLDER:features+model` for a baseline).
  seeds: tuple[Predictions, ...]  # The predictions of each seed (one for a single run).


# --- Reading entries -------------------------------------------------------------------------


def _members(folder: str, split: str) -> list[tuple[str, Path]]:
  """(model suffix, predictions file) of one folder: a run ("") and/or baseline models; of
  one baseline model for `FOLDER:features+model`."""
  path = Path(folder)
  if not path.is_dir() and ":" in folder:
    base, model = folder.rsplit(":", 1)
    found = _members(base, split)
    chosen = [(suffix, file) for suffix, file in found if suffix == f":{model}"]
    if not chosen:
      names = ", ".join(suffix[1:] for suffix, _ in found if suffix) or "none"
      raise FileNotFoundError(f"{base} has no baseline model {model!r} for {split} (it has: "
                              f"{names})")
    return [("", chosen[0][1])]
  if not path.is_dir():
    raise FileNotFoundError(f"{folder} is not a folder: pass training workdirs or baseline "
                            f"output folders (--out_dir of samplecnn_jax.baseline)")
  found = []
  run_file = workdir_files.predictions_path(path, split)
  if run_file.is_file():
    found.append(("", run_file))
  baseline_json = path / f"baseline_{split}.json"
  if baseline_json.is_file():
    for name in json.loads(baseline_json.read_text()):
      model_file = workdir_files.predictions_path(path, split, name)
      if not model_file.is_file():
        raise FileNotFoundError(
            f"{folder} has {baseline_json.name} but no {model_file.name}: it was written "
            f"before baselines kept their predictions. Rerun `python -m samplecnn_jax.baseline "
            f"--out_dir={folder} ...`")
      found.append((f":{name}", model_file))
  if not found:
    rescore = (f"rescore it with `python -m samplecnn_jax.main --workdir={folder} --mode=eval "
               f"--split={split}`" if (path / workdir_files.CONFIG_FILE).is_file()
               else "is it a training workdir or a baseline --out_dir?")
    raise FileNotFoundError(f"{folder} has no {run_file.name} and no baseline_{split}.json: "
                            f"{rescore}")
  return found


def load_entries(argument: str, split: str = "test") -> list[Entry]:
  """The entries of one command-line argument: a folder, or seeds joined by commas.

  A workdir gives one entry, a baseline folder one per model (named `FOLDER:features+model`,
  which also picks that model alone); `A1,A2,A3` gives the same entries with the seeds of
  each pooled (the folders must hold the same runs and models).
  """
  folders = [part for part in argument.split(",") if part]
  if not folders:
    raise cli.UsageError(f"{argument!r} names no folder")
  members = [_members(folder, split) for folder in folders]
  suffixes = [suffix for suffix, _ in members[0]]
  for folder, found in zip(folders[1:], members[1:], strict=True):
    if [suffix for suffix, _ in found] != suffixes:
      raise ValueError(
          f"{folders[0]} and {folder} hold different runs or baseline models "
          f"({[s or 'run' for s in suffixes]} vs {[s or 'run' for s, _ in found]}): the seeds "
          f"of one entry (A1,A2,...) must be scored the same way")
  entries = []
  for position, suffix in enumerate(suffixes):
    files = [found[position][1] for found in members]
    label = argument if len(folders) == 1 else f"{argument} ({len(folders)} seeds)"
    entries.append(Entry(label + suffix, tuple(folder + suffix for folder in folders),
                         tuple(Predictions.load(f) for f in files)))
  return entries


# --- Checking that entries are comparable ----------------------------------------------------


def aligned(entries: Sequence[Entry]) -> list[Entry]:
  """The entries with every seed's rows in the first one's clip order.

  Raises ValueError, in one line naming the difference, unless every seed of every entry
  scores the same clips (the same ids) with the same labels in the same label space: a
  difference would mean another store, another split, or another version of a dataset.
  """
  reference = entries[0].seeds[0]
  where = entries[0].sources[0]
  order = {str(clip_id): i for i, clip_id in enumerate(reference.clip_ids)}
  result = []
  for entry in entries:
    seeds = []
    for source, seed in zip(entry.sources, entry.seeds, strict=True):
      ids = [str(clip_id) for clip_id in seed.clip_ids]
      if len(ids) != len(order) or not set(ids) <= order.keys():
        extra, missing = sorted(set(ids) - order.keys()), sorted(order.keys() - set(ids))
        odd, holder, other = (extra, source, where) if extra else (missing, where, source)
        raise ValueError(
            f"{source} scores {len(ids)} clips, {where} {len(order)}; {len(odd)} clips of "
            f"{holder} are not in {other} (e.g. {odd[0]!r}): compare needs "
            f"entries scored on the same split of the same store")
      rows = np.asarray([order[clip_id] for clip_id in ids])
      inverse = np.argsort(rows)
      labels, scores = seed.labels[inverse], seed.scores[inverse]
      if labels.shape != reference.labels.shape or not np.array_equal(labels,
                                                                      reference.labels):
        differ = (np.flatnonzero(np.any((labels != reference.labels).reshape(len(labels), -1),
                                        axis=1))
                  if labels.shape == reference.labels.shape else np.arange(1))
        clip_id = str(reference.clip_ids[differ[0]])
        raise ValueError(
            f"{source} and {where} label clip {clip_id!r} differently ({len(differ)} clips "
            f"differ, labels {labels.shape} vs {reference.labels.shape}): they were scored on "
            f"different versions of the store")
      if not _same_map(seed.eval_label_map, reference.eval_label_map):
        raise ValueError(f"{source} and {where} score in different label spaces (their "
                         f"eval_label_map differs): they come from different stores")
      seeds.append(dataclasses.replace(seed, clip_ids=reference.clip_ids, labels=labels,
                                       scores=scores))
    result.append(dataclasses.replace(entry, seeds=tuple(seeds)))
  return result


def _same_map(a: np.ndarray | None, b: np.ndarray | None) -> bool:
  return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


# --- The comparison --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
  """One entry's numbers; `difference*` and `verdict` against the first entry (None for it)."""

  name: str
  sources: tuple[str, ...]
  value: float  # The metric (the mean over seeds for a group).
  ci95: tuple[float, float] | None
  seed_values: tuple[float, ...]  # The metric of each seed.
  difference: float | None = None  # value - the first entry's value.
  difference_ci95: tuple[float, float] | None = None  # Paired bootstrap interval of it.
  verdict: str | None = None


@dataclasses.dataclass(frozen=True)
class Comparison:
  """What `compare` found; `to_json` is the file `--output` writes."""

  split: str
  metric: str
  num_clips: int
  resamples: int
  seed: int
  rows: tuple[Row, ...]

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    record["interval"] = ("95% percentile bootstrap over clips (the same resampled clips for "
                          "every entry and seed); it does not cover the variation between "
                          "training seeds")
    return record


def _entry_statistic(entry: Entry, key: str) -> tuple[Callable, list[Callable]]:
  """The statistic of counts of an entry (mean over its seeds) and those of its seeds."""
  per_seed = []
  for source, seed in zip(entry.sources, entry.seeds, strict=True):
    if key == "accuracy" and seed.labels.ndim != 1:
      raise cli.UsageError(f"{source} is multi-label: accuracy needs a multi-class store. Use "
                           f"--metric=f_score, roc_auc or pr_auc")
    per_seed.append(metrics.resampled_metric(
        key, seed.labels, seed.scores, threshold=seed.f_score_threshold,
        eval_label_map=seed.eval_label_map))
  return (lambda counts: np.mean([f(counts) for f in per_seed], axis=0)), per_seed


def verdict(name: str, difference: float, interval: tuple[float, float] | None) -> str:
  """A plain sentence on a difference in metric points (x 100) and its interval."""
  if interval is None:
    return f"no interval for {name} (fewer than 2 clips)"
  low, high = (100 * v for v in interval)
  points = 100 * difference
  if low > 0:
    return f"{name} is better by {points:.1f} points, 95% CI {low:.1f}-{high:.1f}"
  if high < 0:
    return f"{name} is worse by {-points:.1f} points, 95% CI {-high:.1f}-{-low:.1f}"
  return (f"no clear difference: {name} {points:+.1f} points, 95% CI {low:+.1f} to "
          f"{high:+.1f}")


def compare(entries: Sequence[Entry], *, metric: str = "auto", split: str = "test",
            resamples: int = metrics.BOOTSTRAP_RESAMPLES,
            seed: int = metrics.BOOTSTRAP_SEED) -> Comparison:
  """Scores every entry on the same clips and each against the first (see the module doc).

  `metric`: accuracy, f_score, roc_auc, pr_auc, or auto (the first entry's run metric). Every
  interval resamples the clips with the same seed, so the entries' intervals and the paired
  differences are drawn from the same resamples. Raises ValueError when the entries do not
  score the same clips (`aligned`).
  """
  if len(entries) < 2:
    raise cli.UsageError(f"compare needs at least two entries, got {len(entries)}: pass two "
                         f"or more workdirs or baseline folders")
  if metric not in METRIC_CHOICES:
    raise cli.UsageError(f"--metric={metric}: choose one of {', '.join(METRIC_CHOICES)}")
  entries = aligned(entries)
  key = entries[0].seeds[0].metric if metric == "auto" else metric
  num_clips = len(entries[0].seeds[0].clip_ids)
  ones = np.ones(num_clips)
  options = {"resamples": resamples, "seed": seed}
  statistics = [_entry_statistic(entry, key) for entry in entries]
  first = statistics[0][0]
  rows = []
  for position, (entry, (statistic, per_seed)) in enumerate(zip(entries, statistics,
                                                                 strict=True)):
    value = float(statistic(ones))
    row = Row(entry.name, entry.sources, value,
              metrics.bootstrap_interval(statistic, num_clips, **options),
              tuple(float(f(ones)) for f in per_seed))
    if position > 0:
      def difference(counts, statistic=statistic):
        return statistic(counts) - first(counts)
      interval = metrics.bootstrap_interval(difference, num_clips, **options)
      change = float(difference(ones))
      row = dataclasses.replace(row, difference=change, difference_ci95=interval,
                                verdict=verdict(entry.name, change, interval))
    rows.append(row)
  return Comparison(split, key, num_clips, resamples, seed, tuple(rows))


# --- Command line ----------------------------------------------------------------------------


def format_report(comparison: Comparison) -> str:
  """The table (one row per entry) and one verdict line per entry after the first."""
  c = comparison
  lines = [f"{c.split} {c.metric} on {c.num_clips} clips; 95% CI: percentile bootstrap over "
           f"clips ({c.resamples} resamples, seed {c.seed})"]
  table = [["entry", c.metric, "95% CI", "seeds", "vs first", "95% CI"]]
  for row in c.rows:
    seeds = ("" if len(row.seed_values) == 1 else
             f"{len(row.seed_values)}: {min(row.seed_values):.3f}-{max(row.seed_values):.3f}")
    table.append([
        row.name, f"{row.value:.3f}",
        "-" if row.ci95 is None else f"{row.ci95[0]:.3f}-{row.ci95[1]:.3f}", seeds,
        "" if row.difference is None else f"{row.difference:+.3f}",
        "" if row.difference_ci95 is None else
        f"{row.difference_ci95[0]:+.3f} to {row.difference_ci95[1]:+.3f}"])
  widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
  for r in table:
    lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(r, widths, strict=True))).rstrip())
  lines.insert(2, "-" * max(len(line) for line in lines[1:]))
  lines += [f"vs {c.rows[0].name}: {row.verdict}" for row in c.rows[1:]]
  return "\n".join(lines)


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("split", "test", "Split whose predictions are compared.",
                      flag_values=flag_values)
  flags.DEFINE_enum("metric", "auto", list(METRIC_CHOICES),
                    "Metric compared; auto = the one the first entry's run is judged by.",
                    flag_values=flag_values)
  flags.DEFINE_integer("resamples", metrics.BOOTSTRAP_RESAMPLES,
                       "Bootstrap resamples of the clips (at least 1000).",
                       flag_values=flag_values)
  flags.DEFINE_integer("seed", metrics.BOOTSTRAP_SEED, "Seed of the bootstrap.",
                       flag_values=flag_values)
  flags.DEFINE_string("output", None, "Also write the comparison as JSON to this file.",
                      flag_values=flag_values)


def _command(f: flags.FlagValues, args: list[str]) -> int:
  if not args:
    raise cli.UsageError(f"give at least two workdirs or baseline folders, e.g. `{PROG} "
                         f"runs/a runs/b`")
  if f.resamples < 1000:
    raise cli.UsageError(f"--resamples={f.resamples}: use at least 1000 for a 95% interval")
  entries = [entry for argument in args for entry in load_entries(argument, f.split)]
  comparison = compare(entries, metric=f.metric, split=f.split, resamples=f.resamples,
                       seed=f.seed)
  print(format_report(comparison))
  if f.output:
    store.write_json(f.output, comparison.to_json())
    print(f"Wrote {f.output}")
  return cli.EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: `python -m samplecnn_jax.compare A B [...]`; the exit code."""
  return cli.run(PROG, _define_flags, _command, argv, positional="RUN_OR_BASELINE_DIR")


if __name__ == "__main__":
  sys.exit(main())
