"""Command-line entry point: train (and evaluate) a config in a workdir, or evaluate only.

  python -m samplecnn_jax.main --config=configs/dcase.py --workdir=DIR
  python -m samplecnn_jax.main --config=configs/mtat.py:samplecnn --workdir=DIR \
      --config.batch_size=32
  python -m samplecnn_jax.main --config=configs/dcase.py --workdir=DIR --mode=eval \
      --split=test --checkpoint=best

All logic lives in `train.py` so that tests and notebooks can call it directly.
"""

import logging as std_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from samplecnn_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate only.")
_SPLIT = flags.DEFINE_string("split", "test", "Split scored in --mode=eval.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "Checkpoint scored in --mode=eval.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host: TPU pods, several GPU hosts).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax (several lines per checkpoint); warnings still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  std_logging.getLogger("absl").setLevel(std_logging.INFO)
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  if _MODE.value == "eval":
    train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
  else:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
