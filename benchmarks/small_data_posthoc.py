"""What trained small-data runs would score with other scoring, at no training cost.

Not a test. Reads the run workdirs that `benchmarks/small_data.py --keep=DIR` kept and the
classical baseline's predictions it wrote under its --work_dir, and prints, per set, the test
metric of the recommended runs (their best checkpoint) scored five ways:

  network        as the run scored itself (RMS-weighted segment pooling)
  mean pooling   the same checkpoint with `--config.segment_pooling=mean`
  latest         the last checkpoint instead of the best by validation
  seed ensemble  the mean of the seeds' clip probabilities (one number for all seeds)
  + classical    the network's clip probabilities fused with a classical model's by a weighted
                 geometric mean; the classical model (of the baseline's grid) and the weight
                 (0, 0.1, ..., 1) are the ones that score best on the validation split

  python benchmarks/small_data.py --sets=speech,instruments --seeds=0,1,2 --keep=/tmp/keep
  python benchmarks/small_data_posthoc.py --keep=/tmp/keep --sets=speech,instruments

Each run is scored from a copy of its workdir, so the kept runs are not changed. The last row
is what a mode that stacks classical features onto the network could give; no such mode is
built (issue 23 allows one only under its own name).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from samplecnn_jax import evaluate, workdir_files

WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 1)  # The network's share in the fusion.


def score(predictions: workdir_files.Predictions, scores: np.ndarray) -> float:
  """The run's headline metric of `scores` for the clips of `predictions`."""
  map_ = predictions.eval_label_map
  return evaluate.score_clips(
      predictions.labels, scores, predictions.metric,
      eval_label_map=None if map_ is None else list(map_),
      f_score_threshold=predictions.f_score_threshold)[predictions.metric]


def rescore(copy: Path, split: str, checkpoint: str = "best",
            **overrides: str) -> workdir_files.Predictions:
  """The clip predictions on `split` of a run's workdir copy, scored eval-only (which writes
  into the workdir: hence the copy, `rescored_variants`)."""
  config = workdir_files.read_config(copy)
  for field, value in overrides.items():
    config[field] = value
  evaluate.evaluate_checkpoint(config, str(copy), split, checkpoint)
  return workdir_files.Predictions.load(workdir_files.predictions_path(copy, split))


def rescored_variants(run: Path) -> dict[str, workdir_files.Predictions]:
  """`run` re-scored three ways, from one copy of its workdir (the kept run is not changed):
  test with mean pooling, test from the latest checkpoint, and valid (for the fusion)."""
  with tempfile.TemporaryDirectory() as tmp:
    copy = Path(tmp) / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard"))
    return {"mean": rescore(copy, "test", segment_pooling="mean"),
            "latest": rescore(copy, "test", "latest"),
            "valid": rescore(copy, "valid")}


def fuse(network: np.ndarray, classical: np.ndarray, weight: float,
         single_label: bool) -> np.ndarray:
  """Weighted geometric mean of two clip-probability arrays, renormalised for softmax rows."""
  fused = np.exp(weight * np.log(network + 1e-9) + (1.0 - weight) * np.log(classical + 1e-9))
  if single_label:
    fused /= fused.sum(axis=1, keepdims=True)
  return fused


def aligned_scores(target: workdir_files.Predictions, other: workdir_files.Predictions
                   ) -> np.ndarray:
  """`other`'s scores in `target`'s clip order."""
  index = {clip: i for i, clip in enumerate(other.clip_ids.tolist())}
  return other.scores[[index[clip] for clip in target.clip_ids.tolist()]]


def fused_with_classical(valid: workdir_files.Predictions, test: workdir_files.Predictions,
                         baseline: Path) -> tuple[float, str, float]:
  """(test metric, classical model, weight) of the fusion chosen on `valid`."""
  best = None
  single_label = valid.labels.ndim == 1  # Class indices: softmax rows (multi-hot: sigmoid).
  for path in sorted(baseline.glob("predictions_valid_*.npz")):
    model = path.stem[len("predictions_valid_"):]
    classical_valid = aligned_scores(valid, workdir_files.Predictions.load(path))
    test_path = workdir_files.predictions_path(baseline, "test", model)
    classical_test = aligned_scores(test, workdir_files.Predictions.load(test_path))
    for weight in WEIGHTS:
      value = score(valid, fuse(valid.scores, classical_valid, weight, single_label))
      key = (value, -abs(weight - 0.5))  # Ties: the weight nearest an even mix.
      if best is None or key > best[0]:
        best = (key, score(test, fuse(test.scores, classical_test, weight, single_label)), model,
                weight)
  if best is None:
    raise SystemExit(f"no baseline predictions under {baseline}: run benchmarks/small_data.py "
                     f"with the baseline row first")
  return best[1], best[2], float(best[3])


def percent(values: list[float]) -> str:
  return (f"{100 * statistics.median(values):.1f}% (" +
          " / ".join(f"{100 * v:.1f}" for v in values) + ")")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--keep", required=True, help="benchmarks/small_data.py's --keep folder.")
  parser.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "small_data"),
                      help="benchmarks/small_data.py's --work_dir (the baseline predictions).")
  parser.add_argument("--sets", default="speech,instruments,demo")
  parser.add_argument("--row", default="recommended", help="Which kept row to rescore.")
  args = parser.parse_args()
  print("| set | network, seeds ... | mean pooling | latest checkpoint | seed ensemble | "
        "+ classical (chosen on valid) | its model / weight per seed |")
  print("|---|---|---|---|---|---|---|")
  for name in args.sets.split(","):
    runs = sorted(Path(args.keep).glob(f"{name}-{args.row.replace(' ', '')}-*"))
    if not runs:
      print(f"| {name} | no kept runs under {args.keep} | | | | | |")
      continue
    tests = [workdir_files.Predictions.load(workdir_files.predictions_path(r, "test"))
             for r in runs]
    network = [score(t, t.scores) for t in tests]
    variants = [rescored_variants(r) for r in runs]
    mean = [score(v["mean"], v["mean"].scores) for v in variants]
    latest = [score(v["latest"], v["latest"].scores) for v in variants]
    ensemble = score(tests[0], np.mean([aligned_scores(tests[0], t) for t in tests], axis=0))
    fused = [fused_with_classical(v["valid"], t, Path(args.work_dir) / "baseline" / name)
             for v, t in zip(variants, tests, strict=True)]
    chosen = ", ".join(f"{model} / {weight:.1f}" for _, model, weight in fused)
    print(f"| {name} | {percent(network)} | {percent(mean)} | {percent(latest)} | "
          f"{100 * ensemble:.1f}% | {percent([v for v, _, _ in fused])} | {chosen} |", flush=True)


if __name__ == "__main__":
  main()
