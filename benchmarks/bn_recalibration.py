"""BN recalibration on or off on the demo run (configs/demo.py): prints a table.

Not a test: each cell trains the README's demo model (600 steps, minutes on 2 cores).

  python -m samplecnn_jax.prepare demo --out prepared/demo
  python benchmarks/bn_recalibration.py --data_dir=prepared/demo --seeds=0,1,2 --batches=0,8

Cells are the test-split instance F-score of the best checkpoint (by validation loss); the
median is over the seeds. Used to choose `config.bn_recalibration_batches`' default.
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


def run_one(data_dir: str, batches: int, seed: int, steps: int) -> tuple[float, float]:
  """(test F-score, minutes) of one demo run."""
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "samplecnn_jax.main", "--config=configs/demo.py",
           f"--workdir={workdir}", f"--config.data_dir={data_dir}", f"--config.seed={seed}",
           f"--config.num_train_steps={steps}", f"--config.bn_recalibration_batches={batches}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    score = json.loads((Path(workdir) / "metrics_test.json").read_text())["f_score"]
  return score, (time.perf_counter() - start) / 60


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="prepared/demo")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--batches", default="0,8", help="bn_recalibration_batches values.")
  parser.add_argument("--steps", type=int, default=600)
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  values = [int(b) for b in args.batches.split(",")]
  results = {value: [] for value in values}
  for seed in seeds:  # Alternating values within each seed, so load changes hit both.
    for value in values:
      results[value].append(run_one(str(Path(args.data_dir).resolve()), value, seed, args.steps))
  print(f"demo, {args.steps} steps, test instance F-score, seeds {args.seeds}")
  print("| bn_recalibration_batches | per seed | median | min/run |")
  print("|---|---|---|---|")
  for value, cells in results.items():
    scores = ", ".join(f"{s:.3f}" for s, _ in cells)
    median = statistics.median(s for s, _ in cells)
    minutes = statistics.median(m for _, m in cells)
    print(f"| {value} | {scores} | {median:.3f} | {minutes:.1f} |")


if __name__ == "__main__":
  main()
