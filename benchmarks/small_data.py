"""Ablation of the `:small_data` recipe on a small prepared store; prints a table.

Not a test: each row trains real models (minutes on 2 cores). Prepare the excerpt first:

  python -m samplecnn_jax.prepare csv \
      --src ../shared/data/speech_commands_v0.02_excerpt/labels.csv --out /tmp/sd/store
  python benchmarks/small_data.py --data_dir=/tmp/sd/store --seeds=0,1,2 --base_width=16

Rows: the paper recipe from scratch (same steps), `:small_data`, `:small_data` minus each
part, and `:small_data` plus the rms normalisation it leaves off. Every run validates 10 times
and is scored with its best checkpoint. Cells are the median test accuracy over the seeds (a
median of 1 when --seeds has one seed: say so when quoting it). About 8 minutes a run on 2
CPU cores at the defaults (2,000 steps, base_width 16).
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
COMMON = ["--config.dataset=csv", "--config.num_classes=12", "--config.augment.noise_prob=0"]
NO_AUG = ["--config.augment.gain_db=0", "--config.augment.polarity_prob=0",
          "--config.augment.time_mask_prob=0", "--config.augment.mixup_alpha=0",
          "--config.label_smoothing=0"]
ROWS = {
    "paper recipe (sgd, staged), from scratch": ("", []),
    ":small_data": ("small_data", []),
    ":small_data - bn recalibration": ("small_data", ["--config.bn_recalibration_batches=0"]),
    ":small_data - augmentations": ("small_data", NO_AUG),
    ":small_data - mixup": ("small_data", ["--config.augment.mixup_alpha=0"]),
    ":small_data + normalize_rms=0.1": ("small_data", ["--config.normalize_rms=0.1"]),
}


def run_one(data_dir: str, arg: str, extra: list[str], seed: int, steps: int, width: int,
            evals: int = 3) -> float:
  """Trains one model and returns its test accuracy (best checkpoint, `evals` validations)."""
  every = max(1, steps // evals)
  with tempfile.TemporaryDirectory() as workdir:
    config = "configs/speech_commands.py" + (f":{arg}" if arg else "")
    cmd = [sys.executable, "-m", "samplecnn_jax.main", f"--config={config}",
           f"--workdir={workdir}", f"--config.data_dir={data_dir}", f"--config.seed={seed}",
           f"--config.num_train_steps={steps}", f"--config.steps_per_eval={every}",
           f"--config.checkpoint_every_steps={every}",
           f"--config.model.base_width={width}", *COMMON, *extra]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return json.loads((Path(workdir) / "metrics_test.json").read_text())["accuracy"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=2000, help="Training steps of every row.")
  parser.add_argument("--base_width", type=int, default=16)
  parser.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))),
                      help="Comma-separated row numbers to run.")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  names = list(ROWS)
  print(f"| configuration | test accuracy (median of {len(seeds)}) | per seed | min/run |")
  print("|---|---|---|---|")
  for i in (int(r) for r in args.rows.split(",")):
    arg, extra = ROWS[names[i]]
    scores, start = [], time.time()
    for seed in seeds:
      scores.append(run_one(args.data_dir, arg, extra, seed, args.steps, args.base_width, 10))
      print(f"  {names[i]}, seed {seed}: {100 * scores[-1]:.1f}%", file=sys.stderr, flush=True)
    minutes = (time.time() - start) / 60 / len(seeds)
    per_seed = ", ".join(f"{100 * s:.1f}" for s in scores)
    print(f"| {names[i]} | {100 * statistics.median(scores):.1f}% | {per_seed} | {minutes:.1f} |",
          flush=True)


if __name__ == "__main__":
  main()
