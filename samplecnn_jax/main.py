"""Command-line entry point: train (and evaluate) a config in a workdir, or evaluate only.

  python -m samplecnn_jax.main --config=configs/dcase.py --workdir=DIR
  python -m samplecnn_jax.main --config=configs/mtat.py:samplecnn --workdir=DIR \
      --config.batch_size=32
  python -m samplecnn_jax.main --workdir=DIR --mode=eval --split=test --checkpoint=best
  # (--mode=eval reads the config the run recorded in DIR/config.json unless --config is given.)
  # One of several processes (each host runs it with its own --process_id; see
  # docs/multihost.md). On TPU VMs, Slurm and Open MPI, --distributed alone is enough.
  python -m samplecnn_jax.main --config=configs/demo.py --workdir=SHARED_DIR --distributed \
      --coordinator_address=HOST0:1234 --num_processes=2 --process_id=0

All logic lives in `train.py` so that tests and notebooks can call it directly.
"""

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from samplecnn_jax import cli, train
from samplecnn_jax import workdir as workdir_files

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file (required to train; --mode=eval defaults to the workdir's "
    "config.json).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate only.")
_SPLIT = flags.DEFINE_string("split", "test", "Split scored in --mode=eval.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "Checkpoint scored in --mode=eval.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host: TPU pods, several GPU hosts). On "
    "Cloud TPU, Slurm, Open MPI and Kubernetes it finds its peers itself; elsewhere pass "
    "--coordinator_address, --num_processes and --process_id (docs/multihost.md).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator, the same on every process (--distributed). "
    "Default: $JAX_COORDINATOR_ADDRESS, else detected from the cluster.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (--distributed); default: detected.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes) (--distributed); "
    "default: detected.")
flags.mark_flags_as_required(["workdir"])


# Lines that are noise for a user: JAX probing for TPU / IFRT-proxy backends this machine does
# not have, and Orbax noting that a checkpoint folder opened for reading is read-only.
NOISE = ("Unable to initialize backend", "Given directory is read only")


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax (several lines per checkpoint) and the `NOISE` lines."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if str(record.msg).startswith(NOISE):
      return False
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None and _MODE.value == "train":
    raise app.UsageError("Training needs --config=configs/NAME.py[:ARG].")
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _COORDINATOR.value or _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
    raise app.UsageError("--coordinator_address/--num_processes/--process_id need --distributed.")
  std_logging.getLogger("absl").setLevel(std_logging.INFO)
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  if _MODE.value == "eval":
    config = _CONFIG.value or workdir_files.read_config(_WORKDIR.value)
    train.evaluate_checkpoint(config, _WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
  else:
    try:
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except workdir_files.WorkdirLockedError as e:  # Exit at once, non-zero, no traceback.
      logging.error("%s", e)
      sys.exit(3)


if __name__ == "__main__":
  try:
    cli.check_config_overrides(sys.argv)
  except cli.UsageError as error:
    sys.exit(f"main: error: {error}")
  app.run(main)
