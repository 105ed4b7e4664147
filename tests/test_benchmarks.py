"""Tests for benchmarks/gpu_check.sh and benchmarks/gpu_summary.py (no GPU needed).

The dry run prints every command of the GPU check and runs none (PATH holds no programs);
each printed benchmark command is accepted by the real argument parser; the summary reads a
real `train_step_speed.py --json` run (tiny config, CPU) and decides the targets from rows
and training logs. Benchmark timings themselves are never tested.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_config

sys.path.insert(0, str(REPO))
from benchmarks import gpu_summary, train_step_speed  # noqa: E402

BASH = shutil.which("bash")
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def dry_run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
  empty = tmp_path / "no_programs"
  empty.mkdir(exist_ok=True)
  env = {"PATH": str(empty), "HOME": str(tmp_path), "OUT": str(tmp_path / "out")}
  return subprocess.run([BASH, str(SCRIPT), "--dry-run", *flags], env=env, capture_output=True,
                        text=True, timeout=60)


def printed(stdout: str) -> list[tuple[list[str], str | None]]:
  """(command words, log file) of each `+ ...` line."""
  commands = []
  for line in stdout.splitlines():
    if line.startswith("+ "):
      words = shlex.split(line[2:])
      log = words[-1] if len(words) > 2 and words[-2] == ">" else None
      commands.append((words[:-2] if log else words, log))
  return commands


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path):
  proc = dry_run(tmp_path)
  assert proc.returncode == 0, proc.stderr
  commands = printed(proc.stdout)
  out = tmp_path / "out"
  assert not out.exists()  # Nothing ran, not even mkdir.
  assert all(log.startswith(str(out) + "/") for _, log in commands if log)
  words = [c for c, _ in commands]
  assert ["python3", "-m", "pip", "install", "-q", "-e", ".[cuda,dev]"] in words
  assert ["nvidia-smi"] in words
  tests = next(c for c in words if c[1:3] == ["-m", "pytest"])
  test_files = [w for w in tests if w.startswith("tests/")]
  assert test_files and all((REPO / f).is_file() for f in test_files)
  benches = [c for c in words if c[1:2] == ["benchmarks/train_step_speed.py"]]
  assert len(benches) == 2
  dtypes = set()
  for command in benches:
    args = train_step_speed.parse_args(command[2:])  # The real parser accepts them.
    assert args.configs.split(",") == sorted(train_step_speed.CONFIGS, key=args.configs.index)
    assert set(args.variants.split(",")) == set(train_step_speed.VARIANTS)
    assert args.matmul == "bfloat16,float32" and args.torch_modes == []
    assert not args.no_memory
    dtypes.add(args.dtype)
  assert dtypes == {"bfloat16", "float32"}
  demos = [c for c in words if c[1:3] == ["-m", "samplecnn_jax.main"]]
  assert len(demos) == 2
  config = load_config("demo")
  for command in demos:
    assert "--config=configs/demo.py" in command
    assert "--config.num_train_steps=200" in command
    overrides = dict(w[len("--config."):].split("=", 1) for w in command
                     if w.startswith("--config."))
    for field in overrides:  # Every override names a real config field.
      node = config
      for part in field.split("."):
        node = node[part]
  assert {c[-1] for c in demos} == {"--config.model.dtype=float32",
                                    "--config.model.dtype=bfloat16"}
  assert words[-1][1:] == ["benchmarks/gpu_summary.py", str(out), "--demo-steps", "200"]


def test_dry_run_offline_flags(tmp_path):
  proc = dry_run(tmp_path, "--no-install", "--wheels=.whl", "--python=/opt/py/bin/python3")
  assert proc.returncode == 0, proc.stderr
  words = [c for c, _ in printed(proc.stdout)]
  assert not any("-e" in c and "install" in c for c in words)
  wheels = next(c for c in words if "install" in c)
  assert wheels[:1] == ["/opt/py/bin/python3"] and "--no-index" in wheels
  assert all(c[0] == "/opt/py/bin/python3" for c in words if c[0].endswith("python3"))


def test_unknown_flag_is_a_clear_error(tmp_path):
  proc = dry_run(tmp_path, "--gpus=2")
  assert proc.returncode == 2
  assert "unknown flag --gpus=2" in proc.stderr and "--help" in proc.stderr


def test_summary_reads_a_real_benchmark_run(tmp_path):
  """The bf16 GPU command line on the tiny config, on CPU: its JSON makes the summary table."""
  out = tmp_path / "out"
  out.mkdir()
  json_path = out / "train_step_bfloat16.json"
  train_step_speed.main([
      "--no-torch", "--configs", "test", "--variants", "samplecnn", "--dtype", "bfloat16",
      "--matmul", "bfloat16,float32", "--matmul-size", "64", "--rounds", "1", "--steps", "1",
      "--no-memory", "--batch", "4", "--json", str(json_path),
  ])
  (row,) = json.loads(json_path.read_text())
  assert row["dtype"] == "bfloat16" and row["jax_ex_s"] > 0
  assert row["matmul_bfloat16_gflop_s"] > 0 and row["matmul_float32_gflop_s"] > 0
  text = gpu_summary.summary(out, 200)
  assert "| test | samplecnn | bfloat16 |" in text
  assert "no train_step_float32.json" in text
  assert text.count("not measured") == 2  # No mtat row, no demo logs.


def _row(fraction: float) -> dict:
  return {"config": "mtat", "variant": "rese2_multi", "dtype": "bfloat16", "jax_ex_s": 100.0,
          "step_gflop": 300.0, "jax_gflop_s": 1e5, "model_bfloat16_fraction": fraction,
          "matmul_bfloat16_fraction": fraction + 0.05}


def _log(path: Path, loss: float) -> None:
  path.write_text(f"I1201 step 150/200 | loss 9.0000 | lr 0.003\n"
                  f"I1201 step 200/200 | loss {loss:.4f} | lr 0.003 | 5.0 steps/s\n")


@pytest.mark.parametrize("fraction, bf16_loss, met", [
    (0.40, 0.5050, ["yes", "yes"]),  # 1% apart.
    (0.30, 0.5150, ["no", "no"]),  # 3% apart.
])
def test_targets(tmp_path, fraction, bf16_loss, met):
  (tmp_path / "train_step_bfloat16.json").write_text(json.dumps([_row(fraction)]))
  _log(tmp_path / "demo_float32.log", 0.5)
  _log(tmp_path / "demo_bfloat16.log", bf16_loss)
  assert [t[2] for t in gpu_summary.targets(tmp_path, 200)] == met
  assert gpu_summary.main([str(tmp_path)]) == 0
  assert "Targets" in (tmp_path / "summary.md").read_text()
