"""Tests for launch/tpu_vm.sh and launch/gpu.sh, by what their commands mean, not their wording.

A dry run executes nothing (PATH holds no programs at all) and prints commands that parse:
gcloud gets the user's VM flags, the workers install this package with an extra that
pyproject.toml defines, and the training command names a real module, flags that main
defines and config fields that exist. Flag errors name what was wrong; a real run with a
recording stand-in for gcloud executes exactly the printed commands, deleting the VM even
when training fails.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import pytest
from conftest import assert_python_command_parses

from samplecnn_jax.testing import REPO

BASH = shutil.which("bash")
TPU = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu.sh"
SEP = "\x1f"  # Separates the arguments the fake gcloud records.
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

pytestmark = [pytest.mark.scripts,
              pytest.mark.skipif(BASH is None, reason="bash is not installed")]


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


def shell_commands(line: str) -> list[tuple[list[str], dict[str, str]]]:
  """The simple commands of a shell line (split at `;`, `&&`, `||`, `|`, `&`), each with its
  redirections ({"<": file, ">": file}; `2>&1` dropped), split as the shell would split them."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  tokens = list(lexer)
  commands, words, redirects = [], [], {}
  i = 0
  while i < len(tokens):
    token = tokens[i]
    if token in (";", "&&", "||", "|", "&"):
      commands.append((words, redirects))
      words, redirects = [], {}
    elif token.isdigit() and tokens[i + 1:i + 2] == [">&"]:
      i += 2  # `2>&1`.
    elif token in ("<", ">"):
      redirects[token] = tokens[i + 1]
      i += 1
    else:
      words.append(token)
    i += 1
  if words:
    commands.append((words, redirects))
  return commands


def python_command(line: str, module: str = "samplecnn_jax.main") -> list[str]:
  """The `PYTHON -m module ...` command of a shell line (after `nohup`, if any)."""
  for words, _ in shell_commands(line):
    words = words[1:] if words[:1] == ["nohup"] else words
    if words[1:3] == ["-m", module]:
      return words
  raise AssertionError(f"no `-m {module}` command in {line!r}")


def assert_installs_this_package(words: list[str], where: str) -> None:
  """`pip install -e PATH[EXTRA]`: the checkout `where`, with an extra pyproject.toml defines."""
  assert words[0].endswith("pip") and words[1] == "install", words
  target = words[words.index("-e") + 1]
  path, _, extra = target.partition("[")
  assert path == where and extra.removesuffix("]") in PROJECT["optional-dependencies"], target


TPU_ALL = ["all", "--name=scnn-test", "--zone=us-central2-b", "--accelerator-type=v4-32",
           "--project=my-proj", "--config=configs/mtat.py:samplecnn", "--workdir=/mnt/ckpt/mtat",
           "--data-dir=/mnt/data/mtat", "--data-src=gs://bucket/prepared/mtat", "--delete-after"]
TPU_TRAIN_ARGS = {"--config=configs/mtat.py:samplecnn", "--workdir=/mnt/ckpt/mtat",
                  "--distributed", "--config.data_dir=/mnt/data/mtat", "--config.batch_size=32"}


def tpu_dry_run(tmp_path: Path) -> list[list[str]]:
  proc = launch(TPU, [*TPU_ALL, "--dry-run", "--", "--config.batch_size=32"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert not list(tmp_path.glob("*.tar.gz")), "a dry run packs nothing"
  return printed(proc.stdout)


def test_tpu_dry_run_prints_every_step_and_runs_nothing(tmp_path):
  create, pack, scp, unpack, install, data, run, delete = tpu_dry_run(tmp_path)
  gcloud_steps = [create, scp, unpack, install, data, run, delete]
  assert all(cmd[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] for cmd in gcloud_steps)
  assert [cmd[4] for cmd in gcloud_steps] == ["create", "scp", "ssh", "ssh", "ssh", "ssh",
                                             "delete"]
  assert create[5] == delete[5] == "scnn-test" and "--quiet" in delete  # Deleted unprompted.
  assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--project=my-proj",
          "--version=tpu-ubuntu2204-base"} <= set(create)
  for cmd in (scp, unpack, install, data, run):
    assert {"--worker=all", "--zone=us-central2-b", "--project=my-proj"} <= set(cmd)
  # The tarball that the copy step packs is what it sends, and the workers unpack it.
  assert "tar" in pack
  (tarball,) = [w for w in pack if w.endswith(".tar.gz")]
  remote = scp[6].removeprefix("scnn-test:")
  assert scp[5] == tarball and scp[6].startswith("scnn-test:")
  assert any(words[:1] == ["tar"] and "~/" + remote in words
             for words, _ in shell_commands(ssh_command(unpack)))
  # Every worker installs this package with the TPU extra, on the Python the project requires.
  pips = [w for w, _ in shell_commands(ssh_command(install)) if w[0].endswith("bin/pip")]
  assert len(pips) == 1
  assert_installs_this_package(pips[0], ".")
  assert PROJECT["requires-python"].removeprefix(">=") in ssh_command(install)
  # The data step copies --data-src to --data-dir.
  assert any({"gs://bucket/prepared/mtat", "/mnt/data/mtat"} <= set(words)
             for words, _ in shell_commands(ssh_command(data)))
  train = python_command(ssh_command(run))
  assert set(train[3:]) == TPU_TRAIN_ARGS and len(train) == 3 + len(TPU_TRAIN_ARGS)


@pytest.mark.slow  # Reads main's flags from `python -m samplecnn_jax.main --help`.
def test_tpu_dry_run_training_command_parses(tmp_path):
  run = tpu_dry_run(tmp_path)[-2]
  assert_python_command_parses(python_command(ssh_command(run)))


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
  line = ssh_command(run)
  assert line.rstrip().endswith("&"), "in the background"
  (background,) = [(w, r) for w, r in shell_commands(line) if "samplecnn_jax.main" in w]
  words, redirects = background
  assert words[0] == "nohup" and redirects["<"] == "/dev/null", "it outlives the ssh session"
  (logs,) = printed(launch(TPU, ["logs", *base], tmp_path).stdout)
  assert "--worker=0" in logs
  ((tail, _),) = shell_commands(ssh_command(logs))
  assert tail[0] == "tail" and "-F" in tail and tail[-1] == redirects[">"], "follows the log"
  (ssh,) = printed(launch(TPU, ["ssh", *base, "--", "nvidia-smi", "||", "true"], tmp_path).stdout)
  assert ssh_command(ssh) == "nvidia-smi || true" and "--worker=all" in ssh


def test_tpu_foreground_run_logs_where_the_logs_step_reads(tmp_path):
  base = ["--zone=z", "--name=n", "--dry-run"]
  (run,) = printed(launch(TPU, ["run", *base, "--workdir=/w"], tmp_path).stdout)
  (logs,) = printed(launch(TPU, ["logs", *base], tmp_path).stdout)
  tees = [w for w, _ in shell_commands(ssh_command(run)) if w[0] == "tee"]
  ((tail, _),) = shell_commands(ssh_command(logs))
  assert tees == [["tee", tail[-1]]]


@pytest.mark.parametrize("args, named", [
    (["run", "--workdir=/w", "--dry-run"], ["--zone"]),
    (["run", "--zone=z", "--dry-run"], ["--workdir"]),
    (["launch", "--zone=z", "--dry-run"], ["launch"]),
    (["create", "--zone=z", "--bogus", "--dry-run"], ["--bogus"]),
    (["data", "--zone=z", "--data-dir=/d", "--dry-run"], ["--data-src"]),
    (["create", "--zone=z"], ["gcloud", "--dry-run"]),
    ([*TPU_ALL, "--detach", "--dry-run"], ["--detach", "--delete-after"]),
])
def test_tpu_flag_errors_name_what_was_wrong(tmp_path, args, named):
  proc = launch(TPU, args, tmp_path)
  assert proc.returncode == 2 and all(word in proc.stderr for word in named), proc.stderr
  assert not printed(proc.stdout), "nothing was run or printed"


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
  assert {"pyproject.toml", "samplecnn_jax/main.py", "launch/tpu_vm.sh"} <= names
  assert not any(name.startswith(".git/") for name in names)


def test_tpu_without_delete_after_keeps_the_vm(tmp_path):
  proc = launch(TPU, [a for a in TPU_ALL if a != "--delete-after"] + ["--dry-run"], tmp_path)
  assert proc.returncode == 0
  assert not any("delete" in cmd for cmd in printed(proc.stdout))


GPU_ARGS = ["--config=configs/dcase.py:rese2multi,bf16", "--workdir=workdirs/dcase",
            "--data-dir=prepared/dcase2017"]
GPU_TRAIN_ARGS = ["--config=configs/dcase.py:rese2multi,bf16", "--workdir=workdirs/dcase",
                  "--config.data_dir=prepared/dcase2017", "--config.batch_size=32"]


def gpu_dry_run(tmp_path: Path, *flags: str) -> list[list[str]]:
  args = [*GPU_ARGS, f"--venv={tmp_path / 'venv'}", *flags, "--dry-run", "--",
          "--config.batch_size=32"]
  proc = launch(GPU, args, tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert not (tmp_path / "venv").exists(), "a dry run creates nothing"
  return printed(proc.stdout)


def test_gpu_dry_run_prints_install_and_training_and_runs_nothing(tmp_path):
  check, venv, pip, gpu_check, train = gpu_dry_run(tmp_path)
  python = str(tmp_path / "venv" / "bin" / "python")
  # The version check is Python that this interpreter (the version the project requires) passes.
  assert check[:2] == ["python3", "-c"]
  assert subprocess.run([sys.executable, "-c", check[2]]).returncode == 0
  assert venv == ["python3", "-m", "venv", str(tmp_path / "venv")]
  assert pip[0] == str(tmp_path / "venv" / "bin" / "pip")
  assert_installs_this_package(pip, str(REPO))
  assert gpu_check[:2] == [python, "-c"]
  compile(gpu_check[2], "<gpu check>", "exec")  # Python that parses.
  assert train[:3] == [python, "-m", "samplecnn_jax.main"]
  assert sorted(train[3:]) == sorted(GPU_TRAIN_ARGS)
  skipped = gpu_dry_run(tmp_path, "--skip-install")
  assert skipped == [gpu_check, train], "--skip-install runs only the GPU check and training"


@pytest.mark.slow  # Reads main's flags from `python -m samplecnn_jax.main --help`.
def test_gpu_dry_run_training_command_parses(tmp_path):
  assert_python_command_parses(gpu_dry_run(tmp_path)[-1])


@pytest.mark.parametrize("args, named", [
    (["--workdir=w", "--dry-run"], ["--config"]),
    (["--config=c.py", "--dry-run"], ["--workdir"]),
    (["--config=c.py", "--workdir=w", "--gpus=2"], ["--gpus=2"]),
])
def test_gpu_flag_errors_name_what_was_wrong(tmp_path, args, named):
  proc = launch(GPU, args, tmp_path)
  assert proc.returncode == 2 and all(word in proc.stderr for word in named), proc.stderr
  assert not printed(proc.stdout)


def test_help_describes_the_flags(tmp_path):
  for script, flag in ((TPU, "--accelerator-type"), (GPU, "--skip-install")):
    proc = launch(script, ["--help"], tmp_path, path="/usr/bin:/bin")
    assert proc.returncode == 0 and flag in proc.stdout and "set -euo" not in proc.stdout


def test_gpu_passes_sigterm_to_training_and_explains_status_3(tmp_path):
  """A SIGTERM to the script reaches the training process, whose status 3 (preempted) the
  script keeps and explains. A stand-in `python` exits 3 on SIGTERM, as main does."""
  venv, record = tmp_path / "venv", tmp_path / "signals"
  (venv / "bin").mkdir(parents=True)
  python = venv / "bin" / "python"
  python.write_text(
      "#!/usr/bin/env bash\n"
      "if [[ \"$1\" == -c ]]; then exit 0; fi\n"  # The GPU check.
      f"trap 'echo TERM >> {shlex.quote(str(record))}; exit 3' TERM\n"
      f"touch {shlex.quote(str(tmp_path / 'training'))}\n"
      "while :; do sleep 0.05; done\n")
  python.chmod(0o755)
  proc = subprocess.Popen(
      [BASH, str(GPU), *GPU_ARGS, f"--venv={venv}", "--skip-install"], text=True,
      env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE)
  deadline = time.monotonic() + 60
  while not (tmp_path / "training").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert record.read_text().split() == ["TERM"], "the training process got SIGTERM once"
  assert proc.returncode == 3 and "preempted" in stderr and "again" in stderr, stderr


def test_tpu_foreground_run_keeps_and_explains_status_3_of_a_worker(tmp_path):
  """The printed worker command, run by a local bash with a stand-in Python that exits 3 as a
  preempted main does: the status is kept, the log holds the output, the line explains it."""
  (run,) = printed(launch(TPU, ["run", "--zone=z", "--workdir=/w", "--dry-run"], tmp_path).stdout)
  (tmp_path / "samplecnn_jax").mkdir()
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  python = tmp_path / "venv" / "bin" / "python"
  python.write_text("#!/usr/bin/env bash\necho 'stopped by SIGTERM at step 5'\nexit 3\n")
  python.chmod(0o755)
  proc = subprocess.run([BASH, "-c", ssh_command(run)], capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
  assert proc.returncode == 3, proc.stderr
  assert "preempted" in proc.stdout and "again" in proc.stdout, proc.stdout
  assert "step 5" in (tmp_path / "samplecnn_jax.log").read_text()
