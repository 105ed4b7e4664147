"""Tests for samplecnn_jax.preemption and the training loop's stop on SIGTERM / SIGINT.

The end-to-end tests signal a real `main` process at a step that is not a checkpoint step
(a launcher pauses it there until the signal has been sent, so the signal lands at that
step whatever the machine's speed), then check the exit code, the checkpoint it saved, that
nothing was evaluated after the signal, and that a rerun ends with the parameters of an
undisturbed run. The 2-process case is in test_multihost.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, tiny_config

from samplecnn_jax import checkpointing, cli, main, preemption, sharding, train

# `main`, paused after the train step argv[1] (once it is logged) until the file argv[2]
# exists; the test creates `argv[2].paused` first, then signals, then creates argv[2].
PAUSE_AT_STEP = """
import pathlib, runpy, sys, time
from samplecnn_jax import train
pause_at, go = int(sys.argv.pop(1)), pathlib.Path(sys.argv.pop(1))
report = train.Progress.report
def report_then_pause(self, step, values):
  report(self, step, values)
  if step == pause_at:
    pathlib.Path(str(go) + ".paused").touch()
    while not go.exists():
      time.sleep(0.02)
train.Progress.report = report_then_pause
runpy.run_module("samplecnn_jax.main", run_name="__main__", alter_sys=True)
"""
STEPS, EVERY, SIGNAL_AT = 12, 4, 6  # Checkpoints and validations at 4, 8, 12; the signal at 6.


def config_for(store):
  return tiny_config(store, num_train_steps=STEPS, steps_per_eval=EVERY,
                     checkpoint_every_steps=EVERY)


@pytest.fixture(scope="module")
def undisturbed(demo_store, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("undisturbed")
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  return workdir


def run_and_signal(store, workdir, signals: list[signal.Signals]) -> subprocess.CompletedProcess:
  """Runs `main` in a subprocess, sends `signals` once it is paused at step SIGNAL_AT."""
  go = workdir.parent / f"{workdir.name}.go"
  cmd = [sys.executable, "-c", PAUSE_AT_STEP, str(SIGNAL_AT), str(go),
         f"--config={REPO / 'configs' / 'test.py'}", f"--workdir={workdir}",
         f"--config.data_dir={store}", f"--config.num_train_steps={STEPS}",
         f"--config.steps_per_eval={EVERY}", f"--config.checkpoint_every_steps={EVERY}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  paused = go.parent / f"{go.name}.paused"
  deadline = time.monotonic() + 300
  while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  assert paused.exists(), proc.communicate(timeout=60)[1][-3000:]
  for sig in signals:
    proc.send_signal(sig)
    time.sleep(0.2)  # Each is handled while the process waits at the pause.
  go.touch()
  stdout, stderr = proc.communicate(timeout=300)
  return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signals", [
    [signal.SIGTERM, signal.SIGTERM],  # A repeated SIGTERM while stopping is ignored.
    [signal.SIGINT],  # Ctrl-C.
], ids=["sigterm_twice", "sigint"])
def test_signal_saves_the_step_and_a_rerun_ends_like_an_undisturbed_run(
    demo_store, undisturbed, tmp_path, signals):
  workdir = tmp_path / "run"
  proc = run_and_signal(demo_store, workdir, signals)
  assert proc.returncode == cli.EXIT_PREEMPTED, proc.stderr[-3000:]
  assert f"step {SIGNAL_AT}" in proc.stderr.splitlines()[-1]  # The one-line message.
  # The latest checkpoint is the step it stopped at, strictly between the last periodic
  # checkpoint (4) and the end (12), beside the periodic one.
  assert checkpointing.checkpoint_step(workdir, "latest") == SIGNAL_AT
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [EVERY, SIGNAL_AT]
  data_state = workdir / "checkpoints" / str(SIGNAL_AT) / "data" / "process_0-of-1.json"
  assert json.loads(data_state.read_text()) == {"next_batch": SIGNAL_AT}
  # Nothing was evaluated after the signal: the last validation and best are step 4's, and
  # the test split was not scored (the run does not look finished).
  assert json.loads((workdir / "metrics_valid.json").read_text())["step"] == EVERY
  assert checkpointing.checkpoint_step(workdir, "best") == EVERY
  assert not (workdir / "metrics_test.json").exists()

  config = config_for(demo_store)
  train.train_and_evaluate(config, str(workdir))  # The rerun resumes from step 6.
  for which in ("latest", "best"):
    a = checkpointing.load_variables(undisturbed, config, which=which)
    b = checkpointing.load_variables(workdir, config, which=which)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (json.loads((workdir / "metrics_test.json").read_text())
          == json.loads((undisturbed / "metrics_test.json").read_text()))


# --- The signal handler and the agreement, in this process ------------------------------------


def test_first_signal_requests_a_stop_later_sigterm_is_ignored_sigint_aborts():
  before = {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS}
  with preemption.StopSignals() as signals:
    agreement = preemption.StopAgreement(signals, sharding.create_mesh())
    assert signals.received is None and not agreement.poll() and not agreement.now()
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.received == "SIGTERM" and agreement.poll() and agreement.now()
    os.kill(os.getpid(), signal.SIGTERM)  # Ignored: the process is still here.
    assert signals.received == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS} == before


def test_main_exits_with_the_preemption_code_and_one_line(monkeypatch, tmp_path, capsys):
  def preempted(config, workdir):
    raise preemption.Preempted("SIGTERM", 6, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", preempted)
  code = main.main(["main", f"--config={REPO / 'configs' / 'test.py'}",
                    f"--workdir={tmp_path}"])
  assert code == cli.EXIT_PREEMPTED == 3
  err = capsys.readouterr().err.strip().splitlines()
  assert "SIGTERM" in err[-1] and "step 6" in err[-1] and "resume" in err[-1]
