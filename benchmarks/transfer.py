"""Transfer (issue 13 part 1): pretrain once, fine-tune on the v0.02 excerpt vs from scratch.

Not a test: every cell trains a real model (minutes on 2 cores). The script prepares its stores
into --cache_dir (once), pretrains once on the source (--source v01: the 300-clip Speech
Commands v0.01 subset, 31 training classes; --source demo: the synthetic demo store), then
trains on the v0.02 excerpt (333 / 72 / 75 clips, speaker-disjoint, 12 classes) for each seed
and condition with the same config and step budget, and prints a table of test accuracy
(best checkpoint by validation loss, 75 test clips).

  nice -n 15 python benchmarks/transfer.py --cache_dir=/tmp/transfer  # v01, then:
  nice -n 15 python benchmarks/transfer.py --cache_dir=/tmp/transfer --source=demo

Conditions (--conditions): scratch, all (init_from, whole model trains), head (init_from,
trainable=head), head_norecal (head with bn_recalibration_batches=0: the trunk's batch
statistics then stay exactly the loaded ones; with :small_data's recalibration they are
recomputed on the target's training batches before each validation), lr01 (init_from,
trunk_lr_factor=0.1). Every target run is configs/speech_commands.py:small_data on the excerpt
(`finetune`), plus the condition's flags.
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
SHARED = REPO.parent / "shared" / "data"  # Where the real excerpts sit beside a checkout.
V01 = "speech_commands_v0.01_subset"
V02_CSV = "speech_commands_v0.02_excerpt/labels.csv"
CONDITIONS = {  # name -> (table label, extra flags, starts from the pretrained run)
    "scratch": ("from scratch", [], False),
    "all": ("init_from, trainable=all", ["--config.trainable=all"], True),
    "head": ("init_from, trainable=head", ["--config.trainable=head"], True),
    "head_norecal": ("init_from, trainable=head, no BN recalibration",
                     ["--config.trainable=head", "--config.bn_recalibration_batches=0"], True),
    "lr01": ("init_from, trunk_lr_factor=0.1", ["--config.trunk_lr_factor=0.1"], True),
}
# The source runs: config, prepare arguments ({data} = --data_root), flags beyond the budget.
SOURCES = {
    "v01": ("configs/speech_commands.py:small_data",
            ["speech_commands", "--src", "{data}/" + V01], []),
    # The demo's own config, with the trunk fields of the target run so that the weights fit.
    "demo": ("configs/demo.py", ["demo"],
             ["--config.model.se_ratio=16.0"]),
}


# The excerpt is a csv store of 12 classes without background noise.
TARGET_FLAGS = ["--config.dataset=csv", "--config.num_classes=12", "--config.augment.noise_prob=0"]


def run_command(cmd: list[str]) -> None:
  """Runs a command from the repository root; on failure shows the end of its output."""
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"Command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def prepare(kind_args: list[str], out: Path) -> Path:
  """Prepares a store into `out` unless a finished one (manifest.json) is already there."""
  if not (out / "manifest.json").is_file():
    run_command([sys.executable, "-m", "samplecnn_jax.prepare", *kind_args, "--out", str(out)])
  return out


def pretrain(args: argparse.Namespace, store: Path) -> tuple[Path, dict, float | None]:
  """Trains the source run once; reused (minutes None) when its workdir holds a test score."""
  config, _, extra = SOURCES[args.source]
  workdir = Path(args.cache_dir) / f"pretrain_{args.source}_w{args.base_width}_s{args.pretrain_steps}"
  metrics = workdir / "metrics_test.json"
  start, minutes = time.time(), None
  if not metrics.is_file():
    steps = args.pretrain_steps
    run_command([sys.executable, "-m", "samplecnn_jax.main", f"--config={config}",
         f"--workdir={workdir}", f"--config.data_dir={store}", "--config.seed=0",
         f"--config.num_train_steps={steps}", f"--config.steps_per_eval={max(1, steps // 3)}",
         f"--config.checkpoint_every_steps={max(1, steps // 3)}",
         f"--config.model.base_width={args.base_width}", *extra])
    minutes = (time.time() - start) / 60
  return workdir, json.loads(metrics.read_text()), minutes


def finetune(store: Path, extra: list[str], seed: int, steps: int, width: int,
             evals: int = 3) -> float:
  """Trains one target run (`configs/speech_commands.py:small_data` + `extra`) and returns its
  test accuracy (best checkpoint of `evals` validations)."""
  every = max(1, steps // evals)
  with tempfile.TemporaryDirectory() as workdir:
    run_command([sys.executable, "-m", "samplecnn_jax.main",
                 "--config=configs/speech_commands.py:small_data", f"--workdir={workdir}",
                 f"--config.data_dir={store}", f"--config.seed={seed}",
                 f"--config.num_train_steps={steps}", f"--config.steps_per_eval={every}",
                 f"--config.checkpoint_every_steps={every}",
                 f"--config.model.base_width={width}", *TARGET_FLAGS, *extra])
    return json.loads((Path(workdir) / "metrics_test.json").read_text())["accuracy"]


def majority_rate(metrics: dict) -> float | None:
  """Accuracy of always answering the most frequent test class (from the confusion matrix)."""
  matrix = metrics.get("confusion_matrix")
  if not matrix:
    return None
  rows = [sum(r) for r in matrix]
  return max(rows) / sum(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache_dir", required=True,
                      help="Where the prepared stores and the pretrained run are kept (reused).")
  parser.add_argument("--data_root", default=str(SHARED),
                      help="The folder holding the real excerpts (the shared data README's).")
  parser.add_argument("--source", choices=sorted(SOURCES), default="v01")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=300, help="Steps of every target run.")
  parser.add_argument("--pretrain_steps", type=int, default=600)
  parser.add_argument("--base_width", type=int, default=8)
  parser.add_argument("--conditions", default="scratch,all,head",
                      help=f"Comma-separated, from: {', '.join(CONDITIONS)}.")
  parser.add_argument("--smoke", action="store_true",
                      help="Tiny settings (1 seed, 6 steps, width 4): checks the wiring only.")
  args = parser.parse_args(argv)
  if args.smoke:
    args.seeds, args.steps, args.pretrain_steps, args.base_width = "0", 6, 6, 4
  unknown = set(args.conditions.split(",")) - set(CONDITIONS)
  if unknown:
    parser.error(f"unknown --conditions {sorted(unknown)}; choose from {list(CONDITIONS)}")
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  cache = Path(args.cache_dir)
  target = prepare(["csv", "--src", f"{args.data_root}/{V02_CSV}"], cache / "sc02")
  source = prepare([a.format(data=args.data_root) for a in SOURCES[args.source][1]],
                   cache / args.source)
  workdir, pre, pre_minutes = pretrain(args, source)
  seeds = [int(s) for s in args.seeds.split(",")]
  scores = ", ".join(f"{k} {v:.3f}" for k, v in pre.items() if isinstance(v, float))
  print(f"Pretrained on {args.source} ({args.pretrain_steps} steps, base_width "
        f"{args.base_width}, seed 0, "
        f"{'reused' if pre_minutes is None else f'{pre_minutes:.1f} min'}): test {scores} on "
        f"{pre.get('num_clips')} clips (always answering the majority class: "
        f"{majority_rate(pre)}); {workdir}")
  print(f"Target: v0.02 excerpt, test split (75 clips, speaker-disjoint), best checkpoint by "
        f"validation loss; configs/speech_commands.py:small_data, {args.steps} steps, "
        f"base_width {args.base_width}, seeds {args.seeds}.")
  print(f"| condition | test accuracy per seed | median of {len(seeds)} | min/run |")
  print("|---|---|---|---|")
  for name in args.conditions.split(","):
    label, extra, from_pretrained = CONDITIONS[name]
    if from_pretrained:
      extra = [f"--config.init_from={workdir}", *extra]
    scores, start = [], time.time()
    for seed in seeds:
      scores.append(finetune(target, extra, seed, args.steps, args.base_width))
    minutes = (time.time() - start) / 60 / len(seeds)
    per_seed = ", ".join(f"{100 * s:.1f}" for s in scores)
    print(f"| {label} | {per_seed} | {100 * statistics.median(scores):.1f}% | {minutes:.1f} |",
          flush=True)


if __name__ == "__main__":
  main()
