"""Orbax checkpoints of a training run: the latest N for resuming, and the best one.

One checkpoint holds everything a run needs to continue exactly: the train state (params,
batch statistics, optimizer state, step, stage, RNG), the Grain iterator state, and a JSON
record of the host-side bookkeeping (best validation value, evaluations without improvement,
stage history). `workdir/checkpoints/` keeps the latest `keep` (saved asynchronously);
`workdir/best/` keeps the single best one by the validation number (saved synchronously so
the staged schedule can reload it at once). Orbax writes each checkpoint under a temporary
name and renames it when complete, so a run killed during a save resumes from the last
complete one.

This module does not decide when to save or what is best (`train.py` does), and reads the
workdir's other files (config.json, labels, metrics) through `workdir.py`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp

from samplecnn_jax import sharding
from samplecnn_jax import workdir as workdir_files

# Config fields that change the shapes or meaning of what a checkpoint holds.
ARCHITECTURE_FIELDS = ("num_classes", "label_type", "input_size", "dataset")


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoints were written for a different model or dataset."""


def _manager(directory: Path, keep: int, asynchronous: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      enable_async_checkpointing=asynchronous,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(directory.absolute(), options=options)


class Checkpointer:
  """The latest-N and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str | Path, keep: int = 2):
    self.workdir = Path(workdir)
    self.latest = _manager(self.workdir / "checkpoints", keep, asynchronous=True)
    self.best = _manager(self.workdir / "best", 1, asynchronous=False)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state: Any, data_iterator: Any, meta: dict[str, Any]) -> None:
    """Saves a resumable checkpoint (asynchronously) at `state.step`."""
    step = int(state.step)
    self.latest.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )

  def save_best(self, state: Any, meta: dict[str, Any]) -> None:
    """Replaces the best checkpoint with `state`."""
    self.best.save(
        int(state.step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    self.best.wait_until_finished()

  def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict] | None:
    """Restores the latest checkpoint into `abstract_state`'s structure and `data_iterator`.

    Returns (state, meta), or None when the workdir has no checkpoint yet.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored["state"], restored["meta"]

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict]:
    """The best checkpoint's state and bookkeeping."""
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"No best checkpoint in {self.workdir / 'best'} yet.")
    restored = self.best.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def check_config_matches(workdir: str | Path, config: Any) -> None:
  """Raises CheckpointMismatchError when `config` cannot load this workdir's checkpoints."""
  saved = workdir_files.saved_config(workdir)
  if saved is None:
    return
  differences = []
  for field in ARCHITECTURE_FIELDS:
    if field in saved and saved[field] != config[field]:
      differences.append(f"{field}: checkpoint {saved[field]!r}, config {config[field]!r}")
  current_model = json.loads(config.model.to_json_best_effort())
  for field, value in saved.get("model", {}).items():
    if field in ("dtype", "remat", "variant", "conv_impl"):  # Do not change what is stored.
      continue
    if current_model.get(field) != value:
      differences.append(f"model.{field}: checkpoint {value!r}, config {current_model.get(field)!r}")
  if differences:
    raise CheckpointMismatchError(
        f"The checkpoints in {workdir} were written with a different configuration:\n  "
        + "\n  ".join(differences)
        + f"\nUse a new --workdir, or the config that wrote them "
        f"({Path(workdir) / workdir_files.CONFIG_FILE})."
    )


def _read_only(workdir: str | Path, which: str) -> tuple[ocp.CheckpointManager, Path, int]:
  """A read-only manager of the best or latest checkpoints, their folder and newest step."""
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}.")
  directory = Path(workdir) / ("best" if which == "best" else "checkpoints")
  manager = ocp.CheckpointManager(
      directory.absolute(), options=ocp.CheckpointManagerOptions(read_only=True, create=False)
  )
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise FileNotFoundError(
        f"No {which} checkpoint in {directory}. Train first with "
        f"`python -m samplecnn_jax.main --config=... --workdir={workdir}`."
    )
  return manager, directory, step


def checkpoint_step(workdir: str | Path, which: str = "best") -> int:
  """The step of a workdir's best or latest checkpoint."""
  manager, _, step = _read_only(workdir, which)
  manager.close()
  return step


def latest_meta(workdir: str | Path) -> tuple[int, dict[str, Any]]:
  """The step and bookkeeping record (stage history, best value) of the latest checkpoint."""
  manager, _, step = _read_only(workdir, "latest")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  manager.close()
  return step, meta


def _model_target(workdir: str | Path, config: Any, where: Any) -> dict[str, Any]:
  """Abstract {'params', 'batch_stats'} (shapes, dtypes, `where` sharding) of the model that
  wrote the workdir's checkpoints: built from its config.json (else `config`), so a
  fine-tuning config with another head still names the source model's arrays."""
  import jax  # Lazy: only loading variables needs the model.
  import jax.numpy as jnp

  from samplecnn_jax import models

  try:
    config = workdir_files.read_config(workdir)
  except FileNotFoundError:
    pass
  model = models.create_model(config.model, config.num_classes)
  dummy = jax.ShapeDtypeStruct((1, config.input_size), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
  target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), target)


def _restore_model_subtrees(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
  """Reads only `target`'s arrays (Orbax partial restore): the optimizer state, the RNG and
  anything else in the checkpoint are neither read nor required to match or be intact."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
  return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def load_variables(workdir: str | Path, config: Any, which: str = "best",
                   check_config: bool = True) -> dict[str, Any]:
  """The model variables {'params', 'batch_stats'} of a workdir's best or latest checkpoint.

  For inference and visualisation: no optimizer or data state is built, and only the
  params and batch_stats arrays are read (a checkpoint whose optimizer state is damaged,
  missing or of another optimizer still loads). `check_config=False` skips the config
  check, for fine-tuning (`transfer.py` matches the variables one by one).
  """
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}.")
  if check_config:
    check_config_matches(workdir, config)
  manager, directory, step = _read_only(workdir, which)
  # Arrays come back replicated over this job's devices: a checkpoint of a multi-host run
  # loads on one machine.
  anywhere = sharding.replicated(sharding.create_mesh())
  try:
    state = _restore_model_subtrees(manager, step, _model_target(workdir, config, anywhere))
  except ValueError as e:
    # The model built here does not name the checkpoint's arrays (no config.json and another
    # config, or a layer renamed since): read the whole state as saved, as before.
    logging.info("Partial restore of %s failed (%s); restoring the whole state.", directory, e)
    manager.close()
    manager, _, _ = _read_only(workdir, which)  # A fresh manager: the first kept its handler.
    state = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=anywhere))
    )["state"]
  finally:
    manager.close()
  logging.info("Loaded %s checkpoint at step %d from %s", which, step, directory)
  return {"params": state["params"], "batch_stats": state["batch_stats"]}
