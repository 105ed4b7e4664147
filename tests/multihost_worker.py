"""One process of the multi-process test (`tests/test_multihost.py`); not a test module itself.

  python tests/multihost_worker.py --data-dir STORE --workdir DIR --out OUT.npz \
      [--num-processes 2 --process-id I --coordinator localhost:PORT] [--sigterm-at-step K]

Joins a `jax.distributed` job on CPU (gloo collectives) when --num-processes > 1, trains the
tiny test config with `train.train_and_evaluate` in the shared `--workdir`, and writes what
this process holds at the end: its own in-memory copy of the final parameters and batch
statistics (the local shard of each replicated array, captured from the last train step)
to `--out`, and the returned test metrics to `--out` with a `.json` suffix.

With --sigterm-at-step K the process sends itself SIGTERM right after its K-th train step
(this process only: a preemption notice that reaches one host). When training stops on a
signal, the `.json` holds the step it stopped at and the process exits with status 3
(`cli.EXIT_PREEMPTED`), as `main` does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", required=True, help="Prepared demo store.")
  parser.add_argument("--workdir", required=True, help="Shared by all processes of a job.")
  parser.add_argument("--out", required=True, help="Where this process writes its .npz.")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--coordinator", default="", help="host:port of process 0.")
  parser.add_argument("--sigterm-at-step", type=int, default=0,
                      help="SIGTERM this process after its K-th train step (0: never).")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if args.num_processes > 1:
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
  import numpy as np

  from samplecnn_jax import cli, preemption, train
  from samplecnn_jax.testing import load_config

  config = load_config("test")
  config.data_dir = args.data_dir

  # Observe (not replace) the real jitted step: keep the state it returned last.
  final, calls = {}, []
  compile_steps = train.compile_steps

  def observed_compile_steps(config, mesh, model):
    steps = compile_steps(config, mesh, model)

    def train_step_observed(state, batch):
      new_state, metrics = steps.train_step(state, batch)
      final["state"] = new_state
      calls.append(1)
      if len(calls) == args.sigterm_at_step:
        os.kill(os.getpid(), signal.SIGTERM)
      return new_state, metrics

    return steps._replace(train_step=train_step_observed)

  train.compile_steps = observed_compile_steps
  try:
    result = train.train_and_evaluate(config, args.workdir)
  except preemption.Preempted as stopped:
    summary = {"process_index": jax.process_index(), "preempted_step": stopped.step,
               "signal": stopped.signal_name}
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary))
    if args.num_processes > 1:
      jax.distributed.shutdown()
    return cli.EXIT_PREEMPTED

  state = final["state"]
  leaves = jax.tree_util.tree_leaves_with_path((state.params, state.batch_stats))
  local = {}
  for path, leaf in leaves:
    # This process's own replica (addressable shard), not a gathered or re-read value.
    local[jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_shards[0].data)
  local["__step__"] = np.asarray(state.step.addressable_shards[0].data)
  np.savez(args.out, **local)
  summary = {"process_index": jax.process_index(), "process_count": jax.process_count(),
             "device_count": jax.device_count(), "result": result}
  Path(args.out).with_suffix(".json").write_text(json.dumps(summary, default=float))
  if args.num_processes > 1:
    jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  try:
    code = main()
  except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    # A plain exit would wait in jax.distributed's exit-time shutdown barrier for peers that
    # are themselves waiting for this process: fail at once instead, like a crashed host.
    os._exit(1)
  sys.exit(code)
