"""Tests for launch/tpu_vm.sh and launch/gpu.sh: the dry run prints the expected commands and
executes nothing (PATH holds no programs at all), flag errors are clear, and a real run with a
recording stand-in for gcloud executes exactly the printed commands, deleting the VM even when
training fails."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import REPO

BASH = shutil.which("bash")
TPU = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu.sh"
SEP = "\x1f"  # Separates the arguments the fake gcloud records.

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def launch(script: Path, args: list[str], tmp_path: Path, path: str | None = None, env=None):
  """Runs a launch script; by default with a PATH that holds no programs at all."""
  if path is None:
    path = str(tmp_path / "no_programs")
    Path(path).mkdir(exist_ok=True)
  env = {"PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **(env or {})}
  return subprocess.run([BASH, str(script), *args], env=env, capture_output=True, text=True,
                        timeout=60)


def printed(stdout: str) -> list[list[str]]:
  """The commands a script printed (`+ ...` lines), split as the shell would split them."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def ssh_command(cmd: list[str]) -> str:
  return next(arg.split("=", 1)[1] for arg in cmd if arg.startswith("--command="))


TPU_ALL = ["all", "--name=scnn-test", "--zone=us-central2-b", "--accelerator-type=v4-32",
           "--project=my-proj", "--config=configs/mtat.py:samplecnn", "--workdir=/mnt/ckpt/mtat",
           "--data-dir=/mnt/data/mtat", "--data-src=gs://bucket/prepared/mtat", "--delete-after"]


def test_tpu_dry_run_prints_every_step_and_runs_nothing(tmp_path):
  proc = launch(TPU, [*TPU_ALL, "--dry-run", "--", "--config.batch_size=32"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "dry run" in proc.stdout
  cmds = printed(proc.stdout)
  create, tar, scp, unpack, install, data, run, delete = cmds
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "scnn-test"]
  assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--project=my-proj",
          "--version=tpu-ubuntu2204-base"} <= set(create)
  assert "tar" in tar and "ls-files" in tar
  assert scp[4] == "scp" and "--worker=all" in scp and scp[6] == "scnn-test:samplecnn_jax.tar.gz"
  for cmd in (unpack, install, data, run):
    assert cmd[4] == "ssh" and "--worker=all" in cmd and "--zone=us-central2-b" in cmd
  assert "tar -xzf" in ssh_command(unpack)
  assert "pip install -q -e \".[tpu]\"" in ssh_command(install)
  assert "python3.12" in ssh_command(install)
  assert "gs://bucket/prepared/mtat /mnt/data/mtat" in ssh_command(data)
  train = shlex.split(ssh_command(run).split("&&", 1)[1].split("2>&1")[0])
  assert train[:3] == ["~/venv/bin/python", "-m", "samplecnn_jax.main"]
  assert train[3:] == ["--config=configs/mtat.py:samplecnn", "--workdir=/mnt/ckpt/mtat",
                       "--distributed", "--config.data_dir=/mnt/data/mtat",
                       "--config.batch_size=32"]
  assert "tee ~/samplecnn_jax.log" in ssh_command(run)
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "scnn-test"]
  assert "--quiet" in delete


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_runtime_version_follows_the_accelerator_unless_given(tmp_path, accelerator, runtime):
  args = ["create", "--zone", "z", "--accelerator-type", accelerator, "--spot", "--dry-run"]
  (create,) = printed(launch(TPU, args, tmp_path).stdout)
  assert f"--version={runtime}" in create and "--spot" in create
  (create,) = printed(launch(TPU, [*args, "--runtime-version=custom-1"], tmp_path).stdout)
  assert "--version=custom-1" in create


def test_tpu_detached_run_logs_and_ssh_steps(tmp_path):
  base = ["--zone=z", "--name=n", "--dry-run"]
  (run,) = printed(launch(TPU, ["run", *base, "--workdir=/w", "--detach"], tmp_path).stdout)
  assert "nohup" in ssh_command(run) and ssh_command(run).endswith("< /dev/null &")
  (logs,) = printed(launch(TPU, ["logs", *base], tmp_path).stdout)
  assert "--worker=0" in logs and "tail -n +1 -F ~/samplecnn_jax.log" == ssh_command(logs)
  (ssh,) = printed(launch(TPU, ["ssh", *base, "--", "nvidia-smi", "||", "true"], tmp_path).stdout)
  assert ssh_command(ssh) == "nvidia-smi || true" and "--worker=all" in ssh


@pytest.mark.parametrize("args, message", [
    (["run", "--workdir=/w", "--dry-run"], "--zone is required"),
    (["run", "--zone=z", "--dry-run"], "--workdir is required"),
    (["launch", "--zone=z", "--dry-run"], "unknown step 'launch'"),
    (["create", "--zone=z", "--bogus", "--dry-run"], "unknown flag --bogus"),
    (["data", "--zone=z", "--data-dir=/d", "--dry-run"], "needs --data-src and --data-dir"),
    (["create", "--zone=z"], "gcloud not found"),
    ([*TPU_ALL, "--detach", "--dry-run"], "would delete the VM while it trains"),
])
def test_tpu_flag_errors(tmp_path, args, message):
  proc = launch(TPU, args, tmp_path)
  assert proc.returncode == 2 and message in proc.stderr
  assert "+ " not in proc.stdout


def _fake_gcloud(tmp_path: Path) -> tuple[str, Path]:
  """A gcloud that records its arguments; it fails the training run when FAIL_RUN is set."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "gcloud_calls"
  script = bin_dir / "gcloud"
  script.write_text(
      "#!/usr/bin/env bash\n"
      f"(IFS=$'{SEP}'; printf '%s\\n' \"$*\") >> {shlex.quote(str(record))}\n"
      "if [[ -n \"${FAIL_RUN:-}\" && \"$*\" == *samplecnn_jax.main* ]]; then exit 3; fi\n"
  )
  script.chmod(0o755)
  return f"{bin_dir}:/usr/bin:/bin", record


def test_tpu_real_run_executes_the_printed_commands_and_deletes_on_failure(tmp_path):
  path, record = _fake_gcloud(tmp_path)
  proc = launch(TPU, TPU_ALL, tmp_path, path=path, env={"FAIL_RUN": "1"})
  assert proc.returncode == 3, proc.stderr  # The failing training step's status.
  calls = [line.split(SEP) for line in record.read_text().splitlines()]
  gcloud_printed = [cmd[1:] for cmd in printed(proc.stdout) if cmd[0] == "gcloud"]
  assert calls == gcloud_printed
  assert calls[0][3] == "create" and calls[-1][3] == "delete"  # Deleted after the failure.
  assert any("samplecnn_jax.main" in arg for arg in calls[-2])
  # The copied tarball is the checkout without git data.
  with tarfile.open(tmp_path / "samplecnn_jax-scnn-test.tar.gz") as tar:
    names = {name.removeprefix("./") for name in tar.getnames()}
  assert {"pyproject.toml", "samplecnn_jax/predict.py", "launch/tpu_vm.sh"} <= names
  assert not any(name.startswith(".git/") for name in names)


def test_tpu_without_delete_after_keeps_the_vm(tmp_path):
  proc = launch(TPU, [a for a in TPU_ALL if a != "--delete-after"] + ["--dry-run"], tmp_path)
  assert proc.returncode == 0
  assert not any("delete" in cmd for cmd in printed(proc.stdout))


def test_gpu_dry_run_prints_install_and_training_and_runs_nothing(tmp_path):
  args = ["--config=configs/dcase.py:rese2multi,bf16", "--workdir=workdirs/dcase",
          "--data-dir=prepared/dcase2017", f"--venv={tmp_path / 'venv'}", "--dry-run",
          "--", "--config.batch_size=32"]
  proc = launch(GPU, args, tmp_path)
  assert proc.returncode == 0, proc.stderr
  check, venv, pip, gpu_check, train = printed(proc.stdout)
  assert check[:2] == ["python3", "-c"] and "(3, 12)" in check[2]
  assert venv == ["python3", "-m", "venv", str(tmp_path / "venv")]
  assert pip[1:] == ["install", "-q", "-e", f"{REPO}[cuda]"]
  assert "gpu" in gpu_check[-1]
  assert train == [str(tmp_path / "venv" / "bin" / "python"), "-m", "samplecnn_jax.main",
                   "--config=configs/dcase.py:rese2multi,bf16", "--workdir=workdirs/dcase",
                   "--config.data_dir=prepared/dcase2017", "--config.batch_size=32"]
  skip = printed(launch(GPU, [*args[:4], "--skip-install", "--dry-run"], tmp_path).stdout)
  assert [cmd[1:3] for cmd in skip] == [["-c", skip[0][2]], ["-m", "samplecnn_jax.main"]]


@pytest.mark.parametrize("args, message", [
    (["--workdir=w", "--dry-run"], "--config is required"),
    (["--config=c.py", "--dry-run"], "--workdir is required"),
    (["--config=c.py", "--workdir=w", "--gpus=2"], "unknown argument --gpus=2"),
])
def test_gpu_flag_errors(tmp_path, args, message):
  proc = launch(GPU, args, tmp_path)
  assert proc.returncode == 2 and message in proc.stderr


def test_help_describes_the_flags(tmp_path):
  for script, flag in ((TPU, "--accelerator-type"), (GPU, "--skip-install")):
    proc = launch(script, ["--help"], tmp_path, path="/usr/bin:/bin")
    assert proc.returncode == 0 and flag in proc.stdout and "set -euo" not in proc.stdout
