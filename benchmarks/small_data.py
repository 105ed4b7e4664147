"""Small data across domains: the recommended recipe, the paper recipe and the classical
baseline on each development set, over seeds; prints one table (docs/small_data.md).

Not a test: each cell trains real models (minutes each on 2 CPU cores). The development sets
are the real excerpts beside the repository and the built-in demo:

  speech       ../shared/data/speech_commands_v0.02_excerpt (12 classes, 333 train clips)
  instruments  ../shared/data/instruments10_excerpt (10 classes, 180 train clips)
  demo         `prepare demo` (6 event classes, multi-label, 1,200 train clips)
  speech_v01   ../shared/data/speech_commands_v0.01_subset (31 classes, 226 train clips): a
               check on a set the recipe was not tuned on, not a development set

  python benchmarks/small_data.py --sets=speech,instruments,demo --seeds=0,1,2

Rows (`--rows`): `recommended` is the README's command exactly (configs/small_data.py, every
data-dependent field derived from the store); `paper` is `configs/small_data.py:paper` (the
same derived data fields, width and steps, trained with the paper's recipe: SGD + Nesterov,
staged learning rate, no augmentation, mean pooling); `baseline` is `samplecnn_jax.baseline`
(deterministic; the best model on test is the number to beat). Other rows are ablations of
the recommended recipe (`ABLATIONS`). A set whose source is absent is skipped with a note.
Cells are medians over the seeds of the store's headline metric on test (accuracy for
multi-class sets, F-score for the demo), with every seed's value.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = {  # name: (domain, prepare arguments)
    "speech": ("speech", ["csv", "--src", str(DATA / "speech_commands_v0.02_excerpt/labels.csv")]),
    "instruments": ("music", ["csv", "--src", str(DATA / "instruments10_excerpt/labels.csv")]),
    "demo": ("synthetic events", ["demo"]),
    # Not tuned on: 30 words and silence, 7 train clips a word (the v0.01 subset's lists).
    "speech_v01": ("speech, unseen", ["speech_commands", "--src",
                                      str(DATA / "speech_commands_v0.01_subset")]),
}
ABLATIONS = {  # Row name: overrides of the recommended command.
    "- rms pooling": ["--config.segment_pooling=mean"],
    "- speed perturbation": ["--config.augment.speed_range=0"],
    "- mixup": ["--config.augment.mixup_alpha=0"],
    "- time shift": ["--config.augment.time_shift_ms=0"],
    "- label smoothing": ["--config.label_smoothing=0"],
    "union mixup labels": ["--config.augment.mixup_labels=union"],
    "+ rms normalisation": ["--config.normalize_rms=0.1"],
    "- bn recalibration": ["--config.bn_recalibration_batches=0"],
    "width 16": ["--config.model.base_width=16"],
    "width 32": ["--config.model.base_width=32"],
    "+ rms crops": ["--config.augment.crop_weighting=rms"],
}


def prepare(name: str, root: Path) -> Path | None:
  """The set's prepared store under `root` (prepared once), or None when its source is absent."""
  store = root / name
  args = SETS[name][1]
  if len(args) > 2 and not Path(args[2]).exists():
    print(f"  {name}: {args[2]} is absent; skipped", file=sys.stderr)
    return None
  if not (store / "manifest.json").is_file():
    subprocess.run([sys.executable, "-m", "samplecnn_jax.prepare", *args, "--out", str(store)],
                   cwd=REPO, check=True, capture_output=True)
  return store


def baseline(store: Path, out: Path) -> tuple[str, float, str]:
  """(metric, best test value, best model) of `samplecnn_jax.baseline` on the store."""
  if not (out / "baseline_test.json").is_file():
    subprocess.run([sys.executable, "-m", "samplecnn_jax.baseline", f"--data_dir={store}",
                    f"--out_dir={out}"], cwd=REPO, check=True, capture_output=True)
  models = json.loads((out / "baseline_test.json").read_text())  # Model name -> metrics.
  metric = "accuracy" if "accuracy" in next(iter(models.values())) else "f_score"
  best = max(models, key=lambda m: models[m][metric])
  return metric, models[best][metric], best


def train(store: Path, row: str, seed: int, budget: float, keep: Path | None) -> dict:
  """Trains one row's model; returns {metric, value, minutes, width, steps}."""
  arg = ":paper" if row == "paper" else ""
  extra = ABLATIONS.get(row, [])
  with tempfile.TemporaryDirectory() as tmp:
    workdir = keep / f"{store.name}-{row.replace(' ', '')}-{seed}" if keep else Path(tmp)
    cmd = [sys.executable, "-m", "samplecnn_jax.main", f"--config=configs/small_data.py{arg}",
           f"--workdir={workdir}", f"--config.data_dir={store}",
           f"--config.budget_minutes={budget:g}", f"--config.seed={seed}", *extra]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    config = json.loads((workdir / "config.json").read_text())
    metrics = json.loads((workdir / "metrics_test.json").read_text())
    return {"metric": config["metric"], "value": metrics[config["metric"]],
            "minutes": (time.time() - start) / 60, "width": config["model"]["base_width"],
            "steps": config["num_train_steps"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sets", default=",".join(SETS), help=f"Comma-separated: {', '.join(SETS)}.")
  parser.add_argument("--rows", default="baseline,paper,recommended",
                      help=f"Comma-separated: baseline, paper, recommended, {', '.join(ABLATIONS)}.")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--budget_minutes", type=float, default=15.0,
                      help="The README command's --config.budget_minutes.")
  parser.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "small_data"),
                      help="Prepared stores and baseline outputs are kept here between runs.")
  parser.add_argument("--keep", default="", help="Keep each run's workdir under this folder.")
  parser.add_argument("--json", default="", help="Also write every value to this JSON file.")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = [r.strip() for r in args.rows.split(",")]
  unknown = [r for r in rows if r not in ("baseline", "paper", "recommended", *ABLATIONS)]
  if unknown or any(s not in SETS for s in args.sets.split(",")):
    parser.error(f"unknown row or set: {unknown or args.sets}")
  root, keep = Path(args.work_dir), Path(args.keep) if args.keep else None
  record = []
  print(f"| set | domain | train clips | row | test (median of {len(seeds)}) | per seed | "
        f"width / steps | min/run |")
  print("|---|---|---|---|---|---|---|---|")
  for name in args.sets.split(","):
    store = prepare(name, root / "stores")
    if store is None:
      continue
    clips = json.loads((store / "manifest.json").read_text())["splits"]["train"]["num_clips"]
    head = f"| {name} | {SETS[name][0]} | {clips} |"
    trained = [row for row in rows if row != "baseline"]
    if "baseline" in rows:
      metric, value, model = baseline(store, root / "baseline" / name)
      print(f"{head} best classical ({model}) | {100 * value:.1f}% {metric} | (deterministic) "
            f"| - | - |", flush=True)
      record.append({"set": name, "row": "baseline", "model": model, "metric": metric,
                     "values": [value]})
    runs = {row: [] for row in trained}
    for seed in seeds:  # Seed by seed, the rows alternating: a cut-short run stays comparable.
      for row in trained:
        runs[row].append(train(store, row, seed, args.budget_minutes, keep))
        print(f"  {name} {row} seed {seed}: {100 * runs[row][-1]['value']:.1f}%",
              file=sys.stderr, flush=True)
    for row in trained:
      values = [r["value"] for r in runs[row]]
      per_seed = " / ".join(f"{100 * v:.1f}" for v in values)
      minutes = statistics.mean(r["minutes"] for r in runs[row])
      first = runs[row][0]
      print(f"{head} {row} | {100 * statistics.median(values):.1f}% {first['metric']} | "
            f"{per_seed} | {first['width']} / {first['steps']} | {minutes:.1f} |", flush=True)
      record.append({"set": name, "row": row, "metric": first["metric"], "values": values,
                     "minutes": minutes, "width": first["width"], "steps": first["steps"]})
  if args.json:
    Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
  main()
