"""Command line: train (and evaluate) a config in a workdir, or evaluate only.

  python -m samplecnn_jax.main --config=configs/dcase.py --workdir=DIR
  python -m samplecnn_jax.main --config=configs/mtat.py:samplecnn --workdir=DIR \
      --config.batch_size=32
  python -m samplecnn_jax.main --workdir=DIR --mode=eval --split=test --checkpoint=best \
      --config.eval_segments=5
  # (--mode=eval reads the config the run recorded in DIR/config.json unless --config is
  # given; --config.FIELD=VALUE overrides either.)
  # One of several processes (each host runs it with its own --process_id; see
  # docs/multihost.md). On TPU VMs, Slurm and Open MPI, --distributed alone is enough.
  python -m samplecnn_jax.main --config=configs/demo.py --workdir=SHARED_DIR --distributed \
      --coordinator_address=HOST0:1234 --num_processes=2 --process_id=0

Exit codes as every tool's (`cli.py`): 0 done, 2 a usage or configuration error (one line),
3 stopped by SIGTERM/SIGINT after saving the latest checkpoint (rerun to resume).
All logic lives in `train.py` and `evaluate.py` so that tests and notebooks call it directly.
"""

from __future__ import annotations

import functools
import logging as std_logging
import sys
from collections.abc import Sequence

import jax
import ml_collections
from absl import flags, logging

from samplecnn_jax import cli, evaluate, preemption, train, workdir_files

PROG = "python -m samplecnn_jax.main"
CONFIG_HELP = ("Run config file, FILE.py[:ARG] (required to train; --mode=eval defaults to the "
               "workdir's config.json). Override fields with --config.FIELD=VALUE.")

# Lines that are noise for a user: JAX probing for TPU / IFRT-proxy backends this machine does
# not have, and Orbax noting that a checkpoint folder opened for reading is read-only.
NOISE = ("Unable to initialize backend", "Given directory is read only")


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax (several lines per checkpoint) and the `NOISE` lines."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if str(record.msg).startswith(NOISE):
      return False
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _define_flags(fv: flags.FlagValues, argv: Sequence[str],
                  recorded: ml_collections.ConfigDict | None) -> None:
  cli.define_config(fv, CONFIG_HELP, argv, config=recorded)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.",
                      flag_values=fv)
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate only.",
                    flag_values=fv)
  flags.DEFINE_string("split", "test", "Split scored in --mode=eval.", flag_values=fv)
  cli.define_checkpoint(fv)
  flags.DEFINE_bool(
      "distributed", False,
      "Call jax.distributed.initialize() first (multi-host: TPU pods, several GPU hosts). On "
      "Cloud TPU, Slurm, Open MPI and Kubernetes it finds its peers itself; elsewhere pass "
      "--coordinator_address, --num_processes and --process_id (docs/multihost.md).",
      flag_values=fv)
  flags.DEFINE_string(
      "coordinator_address", None,
      "host:port of process 0's coordinator, the same on every process (--distributed). "
      "Default: $JAX_COORDINATOR_ADDRESS, else detected from the cluster.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None,
                       "Processes in the job (--distributed); default: detected.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) "
                       "(--distributed); default: detected.", flag_values=fv)


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of `--name=V` or `--name V` in argv (the last one), before parsing."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _recorded_config(argv: Sequence[str]) -> ml_collections.ConfigDict | None:
  """The workdir's recorded config, for `--mode=eval` without `--config=` (else None).

  It becomes the `--config` flag's value before parsing, so that `--config.FIELD=VALUE`
  overrides apply to it as they do to a config file.
  """
  if _flag_value(argv, "mode") != "eval" or _flag_value(argv, "config") is not None:
    return None
  directory = _flag_value(argv, "workdir")
  if directory is None:
    return None  # The command reports the missing --workdir.
  config = workdir_files.read_config(directory)  # Names --config= when there is no config.json.
  cli.check_config_overrides(argv, config=config, source=f"{directory}/{workdir_files.CONFIG_FILE}")
  return config


def _command(fv: flags.FlagValues, _: list[str]) -> int:
  if not fv.workdir:
    raise cli.UsageError("--workdir is required: the run's folder, e.g. --workdir=workdirs/demo")
  if fv.config is None:
    raise cli.UsageError("training needs --config=configs/NAME.py[:ARG], e.g. "
                         "--config=configs/demo.py")
  if fv.distributed:
    jax.distributed.initialize(coordinator_address=fv.coordinator_address,
                               num_processes=fv.num_processes, process_id=fv.process_id)
  elif fv.coordinator_address or fv.num_processes is not None or fv.process_id is not None:
    raise cli.UsageError("--coordinator_address/--num_processes/--process_id need --distributed")
  _log_to_stderr()
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  if fv.mode == "eval":
    evaluate.evaluate_checkpoint(fv.config, fv.workdir, fv.split, fv.checkpoint)
    return cli.EXIT_DONE
  try:
    train.train_and_evaluate(fv.config, fv.workdir)
  except workdir_files.WorkdirLockedError as error:
    raise cli.UsageError(str(error)) from None
  except preemption.Preempted as stopped:  # Saved, not finished: never exit 0.
    print(f"{PROG}: {stopped}", file=sys.stderr)
    return cli.EXIT_PREEMPTED
  return cli.EXIT_DONE


def _log_to_stderr() -> None:
  """INFO lines of our modules on stderr in absl's format, library chatter filtered out."""
  if not flags.FLAGS.is_parsed():  # absl logging reads its own flags; cli.run parses ours.
    flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  std_logging.getLogger().setLevel(std_logging.INFO)  # train.py logs through the root logger.
  for handler in std_logging.getLogger().handlers:
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
      handler.addFilter(_QuietLibraries())


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit code (0 done, 2 usage or configuration error,
  3 preempted: saved, rerun to resume)."""
  argv = list(sys.argv if argv is None else argv)
  try:
    recorded = _recorded_config(argv)
  except cli.USER_ERRORS as error:
    return cli.report(PROG, error)
  define = functools.partial(_define_flags, argv=argv, recorded=recorded)
  return cli.run(PROG, define, _command, argv)


if __name__ == "__main__":
  sys.exit(main())
