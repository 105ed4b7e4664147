"""The targets of `benchmarks/gpu_check.sh`, read from the files it wrote into its output folder.

Reads `train_step_{bfloat16,float32}.json` (rows of `train_step_speed.py --json`) and the
logs of the two 200-step demo runs (`demo_{float32,bfloat16}.log`, absl's
`step N/N | loss X` lines), prints Markdown tables and the two targets, and writes them to
`summary.md` in the same folder. It measures nothing itself; missing inputs are reported as
such (the check's other steps may have failed), never filled in.

  python benchmarks/gpu_summary.py OUT_DIR [--demo-steps 200]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # Run as a script: make `benchmarks` importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

DTYPES = ("bfloat16", "float32")
MATMUL_TARGET = 0.35  # bf16 train step, rese2_multi on mtat: >= this fraction of a bf16 matmul.
LOSS_TOLERANCE = 0.02  # bf16 and f32 losses after the demo run agree within this (relative).
LOSS_LINE = re.compile(r"step (\d+)/\d+ \| loss (\S+)")


def train_loss(log: Path, step: int) -> float | None:
  """The training loss logged at `step` in a `samplecnn_jax.main` log, or None."""
  if not log.is_file():
    return None
  losses = {int(m[1]): float(m[2]) for m in LOSS_LINE.finditer(log.read_text(errors="replace"))}
  return losses.get(step)


def load_rows(out: Path, dtype: str) -> list[dict]:
  path = out / f"train_step_{dtype}.json"
  return json.loads(path.read_text()) if path.is_file() else []


def speed_table(rows: list[dict]) -> str:
  headers = ["config", "variant", "dtype", "JAX ex/s", "step GFLOP", "JAX TFLOP/s",
             "bf16 matmul TFLOP/s", "fraction of bf16", "conv+dot fraction of bf16",
             "f32 matmul TFLOP/s", "fraction of f32", "peak MB"]
  table = []
  for r in rows:
    memory = r.get("jax_memory") or {}
    table.append([
        r["config"], r["variant"], r["dtype"], r["jax_ex_s"], r["step_gflop"],
        r["jax_gflop_s"] / 1e3, _get(r, "matmul_bfloat16_gflop_s", 1e-3),
        r.get("matmul_bfloat16_fraction"), r.get("model_bfloat16_fraction"),
        _get(r, "matmul_float32_gflop_s", 1e-3), r.get("matmul_float32_fraction"),
        memory.get("step_peak_mb"),
    ])
  return common.format_table(headers, table)


def _get(row: dict, key: str, scale: float) -> float | None:
  return None if row.get(key) is None else row[key] * scale


def targets(out: Path, demo_steps: int) -> list[list[object]]:
  """[target, measured, met] rows; `met` is "yes", "no" or "not measured"."""
  result = []
  target_row = next((r for r in load_rows(out, "bfloat16")
                     if (r["config"], r["variant"]) == ("mtat", "rese2_multi")), None)
  fraction = None if target_row is None else target_row.get("model_bfloat16_fraction")
  result.append([
      f"bf16 train step, rese2_multi on mtat: conv+dot FLOP/s >= {MATMUL_TARGET:.0%} of the "
      "bf16 matmul's",
      "-" if fraction is None else f"{fraction:.1%} (XLA-counted FLOPs: "
      f"{target_row['matmul_bfloat16_fraction']:.1%})",
      "not measured" if fraction is None else ("yes" if fraction >= MATMUL_TARGET else "no"),
  ])
  losses = {d: train_loss(out / f"demo_{d}.log", demo_steps) for d in DTYPES}
  if None in losses.values():
    result.append([f"demo loss after {demo_steps} steps, bf16 vs f32 within "
                   f"{LOSS_TOLERANCE:.0%}", f"losses {losses}", "not measured"])
  else:
    gap = abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"])
    result.append([
        f"demo loss after {demo_steps} steps, bf16 vs f32 within {LOSS_TOLERANCE:.0%}",
        f"f32 {losses['float32']:.4f}, bf16 {losses['bfloat16']:.4f}: {gap:.2%} apart",
        "yes" if gap <= LOSS_TOLERANCE else "no",
    ])
  return result


def summary(out: Path, demo_steps: int) -> str:
  parts = ["# GPU check", ""]
  for dtype in DTYPES:
    rows = load_rows(out, dtype)
    parts += [f"## Train step, {dtype}", "",
              speed_table(rows) if rows else f"(no train_step_{dtype}.json: the step failed)", ""]
  parts += ["## Targets", "", common.format_table(["target", "measured", "met"],
                                                    targets(out, demo_steps)), ""]
  return "\n".join(parts)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out", type=Path, help="The output folder of gpu_check.sh.")
  parser.add_argument("--demo-steps", type=int, default=200, help="Steps of the demo runs.")
  args = parser.parse_args(argv)
  text = summary(args.out, args.demo_steps)
  print(text)
  (args.out / "summary.md").write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
