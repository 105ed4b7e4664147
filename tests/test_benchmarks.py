"""Tests for the benchmark scripts (benchmarks/), as a user runs them; nothing is measured.

Every script shows its --help. `benchmarks/gpu_check.sh --dry-run` runs nothing (PATH holds
no programs) and prints commands that mean what the check needs: the package with extras
that pyproject.toml defines, test files that exist, benchmark and training commands with
flags their tools define and config fields that exist, and outputs where
`benchmarks/gpu_summary.py` reads them; the summary decides the targets from rows and
training logs. No test imports a benchmark: each runs as its command line.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import assert_python_command_parses

from samplecnn_jax.testing import REPO, load_config

BASH = shutil.which("bash")
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SUMMARY = REPO / "benchmarks" / "gpu_summary.py"
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# Scripts (not helper modules such as common.py): what a user runs.
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())

pytestmark = pytest.mark.scripts
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@pytest.mark.slow  # Each script starts in a subprocess (most import JAX).
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_shows_its_help(script):
  proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("usage:") and "--help" in proc.stdout


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


def options(words: list[str]) -> dict[str, str | None]:
  """`--flag value` / `--flag` words as {flag: value or None}, in a command with no positionals."""
  found = {}
  for i, word in enumerate(words):
    if word.startswith("--"):
      value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
      found[word[2:]] = value
  return found


def dry_run_commands(tmp_path: Path) -> dict[str, list[tuple[list[str], str | None]]]:
  """The printed commands by what they run: pip, tests, benchmark, demo, summary, other."""
  proc = dry_run(tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert not (tmp_path / "out").exists(), "nothing ran, not even mkdir"
  kinds = {}
  for words, log in printed(proc.stdout):
    if words[1:3] == ["-m", "pip"]:
      kind = "pip"
    elif words[1:3] == ["-m", "pytest"]:
      kind = "tests"
    elif words[1:3] == ["-m", "samplecnn_jax.main"]:
      kind = "demo"
    elif words[1:2] == ["benchmarks/train_step_speed.py"]:
      kind = "benchmark"
    elif words[1:2] == ["benchmarks/gpu_summary.py"]:
      kind = "summary"
    else:
      kind = "other"
    kinds.setdefault(kind, []).append((words, log))
  return kinds


@needs_bash
def test_dry_run_prints_every_step_and_runs_nothing(tmp_path):
  commands = dry_run_commands(tmp_path)
  out = tmp_path / "out"
  assert all(log.startswith(str(out) + "/") for cmds in commands.values() for _, log in cmds
             if log)
  ((pip, _),) = commands["pip"]
  path, _, extras = pip[pip.index("-e") + 1].partition("[")
  assert path == "." and set(extras.removesuffix("]").split(",")) <= set(EXTRAS)
  assert ["nvidia-smi"] in [words for words, _ in commands["other"]]
  ((tests, _),) = commands["tests"]
  test_files = [w for w in tests if w.startswith("tests/")]
  assert test_files and all((REPO / f).is_file() for f in test_files)
  # The benchmark, in both dtypes, JAX only (no PyTorch on the GPU machine), on configs and
  # variants that exist, and the demo run in both dtypes.
  benchmarks = [options(words) for words, _ in commands["benchmark"]]
  assert sorted(b["dtype"] for b in benchmarks) == ["bfloat16", "float32"]
  for bench in benchmarks:
    assert "no-torch" in bench and "no-memory" not in bench
    assert set(bench["matmul"].split(",")) == {"bfloat16", "float32"}
    for name in bench["configs"].split(","):
      for variant in bench["variants"].split(","):
        load_config(name, variant)  # Raises for a config or variant that does not exist.
  demos = [words for words, _ in commands["demo"]]
  assert sorted(w for words in demos for w in words if w.startswith("--config.model.dtype=")) == [
      "--config.model.dtype=bfloat16", "--config.model.dtype=float32"]
  ((summary, _),) = commands["summary"]
  assert summary[2] == str(out)


@needs_bash
def test_dry_run_outputs_are_where_the_summary_reads_them(tmp_path):
  """Rows at the benchmark's --json paths and logs at the demo runs' log paths, as the real
  check would write them, make the printed summary command decide both targets."""
  commands = dry_run_commands(tmp_path)
  (tmp_path / "out").mkdir()
  for words, _ in commands["benchmark"]:
    bench = options(words)
    Path(bench["json"]).write_text(json.dumps([_row(0.40, bench["dtype"])]))
  for words, log in commands["demo"]:
    steps = int(next(w for w in words if w.startswith("--config.num_train_steps=")).split("=")[1])
    _log(Path(log), 0.5, steps)
  ((summary, _),) = commands["summary"]
  proc = subprocess.run([sys.executable, *summary[1:]], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert _targets_met(tmp_path / "out") == ["yes", "yes"]


@needs_bash
@pytest.mark.slow  # Reads each tool's flags from its --help (subprocesses that import JAX).
def test_dry_run_commands_parse(tmp_path):
  commands = dry_run_commands(tmp_path)
  for kind in ("benchmark", "demo", "summary"):
    for words, _ in commands[kind]:
      assert_python_command_parses(words)


@needs_bash
def test_dry_run_offline_flags(tmp_path):
  proc = dry_run(tmp_path, "--no-install", "--wheels=.whl", "--python=/opt/py/bin/python3")
  assert proc.returncode == 0, proc.stderr
  words = [c for c, _ in printed(proc.stdout)]
  assert not any("-e" in c and "install" in c for c in words)
  wheels = next(c for c in words if "install" in c)
  assert wheels[:1] == ["/opt/py/bin/python3"] and "--no-index" in wheels
  assert all(c[0] == "/opt/py/bin/python3" for c in words if c[0].endswith("python3"))


@needs_bash
def test_unknown_flag_names_it_and_points_to_help(tmp_path):
  proc = dry_run(tmp_path, "--gpus=2")
  assert proc.returncode == 2
  assert "--gpus=2" in proc.stderr and "--help" in proc.stderr
  assert not printed(proc.stdout)


def _row(fraction: float, dtype: str = "bfloat16") -> dict:
  return {"config": "mtat", "variant": "rese2_multi", "dtype": dtype, "jax_ex_s": 100.0,
          "step_gflop": 300.0, "jax_gflop_s": 1e5, "model_bfloat16_fraction": fraction,
          "matmul_bfloat16_fraction": fraction + 0.05}


def _log(path: Path, loss: float, steps: int = 200) -> None:
  """The lines of a `samplecnn_jax.main` log that the summary reads."""
  path.write_text(f"I1201 step {steps - 50}/{steps} | loss 9.0000 | lr 0.003\n"
                  f"I1201 step {steps}/{steps} | loss {loss:.4f} | lr 0.003 | 5.0 steps/s\n")


def _targets_met(out: Path) -> list[str]:
  """The `met` column of the Targets table in OUT/summary.md."""
  text = (out / "summary.md").read_text()
  table = text.split("## Targets", 1)[1].strip().splitlines()[2:]
  return [line.strip("|").split("|")[-1].strip() for line in table]


@pytest.mark.parametrize("fraction, bf16_loss, met", [
    (0.40, 0.5050, ["yes", "yes"]),  # 1% apart.
    (0.30, 0.5150, ["no", "no"]),  # 3% apart.
])
def test_targets(tmp_path, fraction, bf16_loss, met):
  (tmp_path / "train_step_bfloat16.json").write_text(json.dumps([_row(fraction)]))
  _log(tmp_path / "demo_float32.log", 0.5)
  _log(tmp_path / "demo_bfloat16.log", bf16_loss)
  proc = subprocess.run([sys.executable, str(SUMMARY), str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert _targets_met(tmp_path) == met
  assert "no train_step_float32.json" in proc.stdout  # Missing inputs are reported, not filled.


def test_missing_inputs_are_not_measured(tmp_path):
  proc = subprocess.run([sys.executable, str(SUMMARY), str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert _targets_met(tmp_path) == ["not measured", "not measured"]


@pytest.mark.slow  # Prepares two real excerpts and trains three tiny runs.
def test_transfer_smoke_runs_every_stage(shared_data, tmp_path):
  """The transfer benchmark end to end at its --smoke size: pretrains, fine-tunes, prints rows."""
  proc = subprocess.run(
      [sys.executable, "benchmarks/transfer.py", "--smoke", f"--cache_dir={tmp_path}",
       f"--data_root={shared_data}", "--conditions=scratch,head"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")]
  assert [row[0] for row in rows] == ["| condition", "| from scratch",
                                      "| init_from, trainable=head"]
  assert all(0.0 <= float(row[1]) <= 100.0 for row in rows[1:])  # Test accuracy per seed, %.
  assert (tmp_path / "pretrain_v01_w4_s6" / "metrics_test.json").is_file()
