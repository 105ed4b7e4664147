"""Stopping a training run cleanly on SIGTERM or SIGINT (preemption, Ctrl-C), on every process.

Spot and preemptible VMs are stopped with SIGTERM and about 30 s of notice; Ctrl-C sends
SIGINT. Without a handler SIGTERM kills the run at once and loses every step since the last
checkpoint. Here the first SIGTERM or SIGINT only sets a flag (`StopSignals`); the training
loop reads it between two steps through `StopAgreement`, which makes all processes of a
`jax.distributed` job agree on the step at which they stop (the signal may reach one process
only, while the processes' host loops are at different steps), saves the latest checkpoint
there and raises `Preempted`, which `main` turns into exit code 3 (`cli.EXIT_PREEMPTED`).

This module decides neither what is saved (`train.py`) nor exit codes (`main.py`, `cli.py`).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal after saving the latest checkpoint; a rerun resumes there."""

  def __init__(self, signal_name: str, step: int, workdir: str):
    self.signal_name, self.step, self.workdir = signal_name, step, workdir
    super().__init__(
        f"stopped by {signal_name} at step {step}: the latest checkpoint (step {step}) is "
        f"saved in {workdir}. Run the same command again to resume from it.")


class StopSignals:
  """While active (a context manager), the first SIGTERM or SIGINT only requests a stop.

  `received` is then the signal's name ("SIGTERM"), which the training loop reads between
  steps. Later signals, while the run finishes its step and saves: SIGTERM is ignored (a
  scheduler may repeat it); SIGINT aborts at once with KeyboardInterrupt (a second Ctrl-C),
  which never damages a checkpoint (Orbax renames a checkpoint into place only once it is
  complete). Outside the main thread (Python delivers signals there only) it does nothing.
  The previous handlers are restored on exit.
  """

  def __init__(self):
    self.received: str | None = None
    self._previous: dict[signal.Signals, object] = {}

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for sig in STOP_SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               traceback: TracebackType | None) -> None:
    for sig, previous in self._previous.items():
      # None: a handler installed outside Python (JAX's preemption notifier); not restorable.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if self.received is None:
      self.received = name
      logging.warning("%s received: finishing the current step, saving the latest checkpoint, "
                      "then exiting with status 3 (a second Ctrl-C aborts at once).", name)
      return
    if signum == signal.SIGINT:
      raise KeyboardInterrupt(f"{name} after {self.received}: aborted without finishing the "
                              f"stop (the earlier checkpoints are kept)")
    logging.warning("%s received again: ignored, the run is already stopping.", name)


class StopAgreement:
  """Whether the whole job stops now: the same answer on every process, at the same step.

  One process: its own `StopSignals` flag, read at once. Several: every `poll` dispatches a
  maximum of the processes' flags over all devices (one tiny all-reduce, asynchronous like
  a train step) and returns the result dispatched by the previous `poll`. The processes'
  host loops may be at different steps, but they dispatch the same sequence of collectives,
  so every process reads the same value at the same loop iteration, and they stop at the
  same step; a signal is acted on one step late. Reading the previous result, not the new
  one, lets the host run one step ahead of the devices, as it does without the check.
  Call `poll` once per step and `now` once at the end, on every process.
  """

  def __init__(self, signals: StopSignals, mesh: Mesh):
    self.signals = signals
    self._pending: jax.Array | None = None
    self._multi = jax.process_count() > 1
    if self._multi:
      self._sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
      self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

  def _dispatch(self) -> jax.Array:
    flag = np.full(jax.local_device_count(), self.signals.received is not None, np.int32)
    flags = jax.make_array_from_process_local_data(self._sharding, flag,
                                                   (jax.device_count(),))
    return self._max(flags)

  def poll(self) -> bool:
    """True when the job should stop before its next step (the previous poll's agreement)."""
    if not self._multi:
      return self.signals.received is not None
    previous, self._pending = self._pending, self._dispatch()
    return previous is not None and bool(previous.addressable_data(0))

  def now(self) -> bool:
    """True when any process received a signal by now (waits for every process)."""
    if not self._multi:
      return self.signals.received is not None
    self._pending = None
    return bool(self._dispatch().addressable_data(0))
