"""Starting a run from another run's trained weights (fine-tuning), and freezing the trunk.

`config.init_from=WORKDIR` loads the parameters and batch statistics of every layer whose
path and shape match from WORKDIR's best (or latest) checkpoint; the head is re-initialised
where it does not match (another class count); a trunk that does not match (another
variant, width or depth) stops the run with the mismatched paths. `config.trainable=head`
freezes the trunk: its parameters get no updates and its batch statistics keep their loaded
values (the trunk still normalises with batch statistics in training, as the whole model
does; only the running averages are kept fixed). `config.trunk_lr_factor` scales the
trunk's learning rate when the whole model trains.

The trunk is the front conv and the pooled blocks (`models.SampleLevelCNN.trunk`); the
head is everything after it (head_dense / head_conv, head_bn, logits). This module does not
decide when weights are loaded: `train.restore_state` does (resume > init_from > scratch).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from samplecnn_jax import checkpointing, workdir_files

TRAINABLE = ("all", "head")
TRUNK_LAYERS = ("front_conv", "front_bn")  # With every `block<i>`: what `trunk()` builds.


class TrunkMismatchError(ValueError):
  """The run to start from has a trunk of another shape (variant, width or depth)."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early on transfer fields the run cannot use."""
  if config.trainable not in TRAINABLE:
    raise ValueError(f"config.trainable={config.trainable!r} is not valid; choose one of: "
                     f"{', '.join(TRAINABLE)}.")
  checkpointing.check_which(config.init_from_checkpoint, "--config.init_from_checkpoint")
  if not config.trunk_lr_factor >= 0:
    raise ValueError(f"config.trunk_lr_factor must be >= 0, got {config.trunk_lr_factor}: "
                     "set --config.trunk_lr_factor (1.0 = the paper's).")
  if config.init_from and not (Path(config.init_from) / workdir_files.CONFIG_FILE).is_file():
    raise FileNotFoundError(
        f"config.init_from={config.init_from!r} is not a training workdir (no config.json "
        "there). Point it at the --workdir of a finished or running training run.")


def is_trunk(path: tuple[str, ...]) -> bool:
  """Whether a variable's path (top-level module first) belongs to the trunk."""
  return path[0] in TRUNK_LAYERS or path[0].startswith("block")


def partition_labels(params: Any) -> Any:
  """'trunk' or 'head' for every leaf of `params` (for optax.multi_transform)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {path: "trunk" if is_trunk(path) else "head" for path in flat})


def partitioned(config: ml_collections.ConfigDict, build: Any) -> Any:
  """Wraps `build(learning_rate) -> GradientTransformation` for trainable / trunk_lr_factor.

  `train.create_optimizer` uses it only when these fields are not at their defaults.
  """

  def build_partitioned(learning_rate):
    if config.trainable == "head":
      trunk = optax.set_to_zero()
    else:
      trunk = build(learning_rate * config.trunk_lr_factor)
    return optax.multi_transform({"trunk": trunk, "head": build(learning_rate)},
                                 partition_labels)

  return build_partitioned


def keep_frozen_stats(config: ml_collections.ConfigDict, old: Any, new: Any) -> Any:
  """The batch statistics after a step: the trunk's stay `old` when the trunk is frozen."""
  if config.trainable != "head":
    return new
  old_flat, new_flat = traverse_util.flatten_dict(old), traverse_util.flatten_dict(new)
  return traverse_util.unflatten_dict(
      {path: old_flat[path] if is_trunk(path) else value for path, value in new_flat.items()})


def match_variables(
    target: dict[str, Any], source: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
  """Takes each variable of `source` whose path and shape match `target`'s.

  `target` and `source` are {'params', 'batch_stats'} trees. Returns the merged variables
  and rows (collection/path, what happened, shapes) for the log table. Raises
  TrunkMismatchError naming every trunk variable that is missing or of another shape.
  """
  merged, rows, mismatched = {}, [], []
  for collection in ("params", "batch_stats"):
    tgt = traverse_util.flatten_dict(target[collection])
    src = traverse_util.flatten_dict(source.get(collection) or {})
    out = {}
    for path, value in tgt.items():
      name = f"{collection}/{'/'.join(path)}"
      here = tuple(np.shape(value))
      there = tuple(np.shape(src[path])) if path in src else None
      if there == here:
        out[path] = jnp.asarray(src[path], dtype=value.dtype)
        rows.append((name, "loaded", str(here)))
      elif is_trunk(path):
        mismatched.append(f"{name}: this run {here}, "
                          + (f"init_from {there}" if there else "missing in init_from"))
      else:
        out[path] = value
        rows.append((name, "re-initialised", f"{here} (init_from: {there or 'missing'})"))
    for path in src.keys() - tgt.keys():
      rows.append((f"{collection}/{'/'.join(path)}", "left out", str(tuple(np.shape(src[path])))))
    merged[collection] = traverse_util.unflatten_dict(out)
  if mismatched:
    raise TrunkMismatchError(
        "The trunk of config.init_from does not match this run's model (another variant, "
        "base_width or num_blocks?):\n  " + "\n  ".join(sorted(mismatched))
        + "\nUse the same config.model trunk fields as the run you start from.")
  return merged, rows


def format_table(rows: list[tuple[str, str, str]]) -> str:
  """The log table of what was loaded, re-initialised or left out."""
  width = max(len(name) for name, _, _ in rows)
  lines = [f"{'variable':<{width}}  {'action':<14}  shape", "-" * (width + 30)]
  lines += [f"{name:<{width}}  {action:<14}  {shape}" for name, action, shape in sorted(rows)]
  counts = {a: sum(r[1] == a for r in rows) for a in ("loaded", "re-initialised", "left out")}
  lines.append(", ".join(f"{n} {a}" for a, n in counts.items()))
  return "\n".join(lines)


def load_into(config: ml_collections.ConfigDict, variables: dict[str, Any]) -> dict[str, Any]:
  """`variables` with every matching layer replaced by config.init_from's; logs the table."""
  loaded = checkpointing.read_checkpoint(config.init_from, config, config.init_from_checkpoint,
                                         check_config=False)  # Falls back if damaged.
  if loaded.note:
    logging.warning("config.init_from: %s", loaded.note)
  source = jax.tree.map(np.asarray, loaded.variables)
  merged, rows = match_variables(variables, source)
  logging.info("Initialised from the %s checkpoint of %s:\n%s", config.init_from_checkpoint,
               config.init_from, format_table(rows))
  return merged
