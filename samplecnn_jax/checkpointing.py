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
workdir's other files (config.json, labels, metrics) through `workdir_files.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from samplecnn_jax import models, sharding, workdir_files
from samplecnn_jax.cli import CHECKPOINTS

# Config fields that change the shapes or meaning of what a checkpoint holds.
ARCHITECTURE_FIELDS = ("num_classes", "label_type", "input_size", "dataset")
# Config fields that change the structure of the optimizer state (not of the model).
OPTIMIZER_FIELDS = ("optimizer", "grad_clip_norm", "weight_decay", "trainable", "trunk_lr_factor")
DAMAGED_DIR = "damaged"  # Where checkpoints that do not restore are moved (never deleted).


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoints were written for a different model or dataset."""


def check_which(which: str, field: str = "--checkpoint") -> str:
  """The one check of a "best" / "latest" choice (`field` names where it came from)."""
  if which not in CHECKPOINTS:
    raise ValueError(f"{field}={which!r} is not a checkpoint of a workdir; choose one of: "
                     f"{', '.join(CHECKPOINTS)}.")
  return which


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

  def restore_latest(
      self, template: Any, data_iterator: Any, validate: Callable[[Any], str | None] | None = None
  ) -> tuple[Any, dict] | None:
    """Restores the newest checkpoint that restores cleanly into `template`'s structure.

    A step that fails (a truncated file, a bad tensorstore chunk, or `validate(state)`
    returning a reason) is reported and the next older one is tried; once an older one
    restores, the failed newer steps are moved to `workdir/damaged/` (never deleted). When
    none restores, nothing is moved and `DamagedCheckpointError` says what was tried.
    Returns (state, meta), or None when the workdir has no checkpoint yet. `data_iterator`
    is set to the restored step's position.
    """

    def restore(step: int) -> tuple[Any, dict]:
      def args(state_args):
        return ocp.args.Composite(state=state_args,
                                  data=grain.checkpoint.CheckpointRestore(data_iterator),
                                  meta=ocp.args.JsonRestore())
      restored = _restore_state(self.latest, step, template, args)
      return restored["state"], restored["meta"]

    return _newest_that_restores(self.latest, "latest", restore, validate, self.workdir)

  def restore_best(self, template: Any,
                   validate: Callable[[Any], str | None] | None = None) -> tuple[Any, dict]:
    """The best checkpoint's state and bookkeeping; a damaged one is moved aside and raises."""
    if self.best.latest_step() is None:
      raise FileNotFoundError(f"No best checkpoint in {self.workdir / 'best'} yet.")

    def restore(step: int) -> tuple[Any, dict]:
      def args(state_args):
        return ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
      restored = _restore_state(self.best, step, template, args)
      return restored["state"], restored["meta"]

    return _newest_that_restores(self.best, "best", restore, validate, self.workdir,
                                 move_when_none=True)

  def has_best(self) -> bool:
    return self.best.latest_step() is not None

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


class DamagedCheckpointError(RuntimeError):
  """No checkpoint of a workdir restores (each step's reason is in the message)."""


def _reason(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}"


def _move_aside(manager: ocp.CheckpointManager, step: int, workdir: Path) -> Path:
  """Moves a damaged step out of the managed folder (into workdir/damaged/) and forgets it."""
  source = Path(manager.directory) / str(step)
  name = f"{source.parent.name}_{step}"  # checkpoints_N or best_N.
  target, suffix = workdir / DAMAGED_DIR / name, 1
  while target.exists():
    target, suffix = workdir / DAMAGED_DIR / f"{name}.{suffix}", suffix + 1
  target.parent.mkdir(parents=True, exist_ok=True)
  source.rename(target)
  manager.reload()
  return target


def _newest_that_restores(manager: ocp.CheckpointManager, kind: str,
                          restore: Callable[[int], tuple[Any, dict]],
                          validate: Callable[[Any], str | None] | None, workdir: Path,
                          move_when_none: bool = False) -> tuple[Any, dict] | None:
  """Tries the steps of `manager` newest first; see `Checkpointer.restore_latest`."""
  failed: list[tuple[int, str]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, meta = restore(step)
      problem = validate(state) if validate is not None else None
    except Exception as error:  # Any damage: JSON, tensorstore, iterator state, metadata.
      problem = _reason(error)
    if problem is None:
      for bad, _ in failed:
        moved = _move_aside(manager, bad, workdir)
        logging.warning("Moved the damaged %s checkpoint of step %d to %s", kind, bad, moved)
      return state, meta
    logging.warning("The %s checkpoint of step %d does not restore (%s); trying an older one.",
                    kind, step, problem)
    failed.append((step, problem))
  if not failed:
    return None
  tried = "\n  ".join(f"step {step}: {problem}" for step, problem in failed)
  moved = ""
  if move_when_none:
    targets = [_move_aside(manager, step, workdir) for step, _ in failed]
    moved = "\nMoved aside (not deleted): " + ", ".join(str(t) for t in targets) + "."
  folder = Path(manager.directory)
  raise DamagedCheckpointError(
      f"No {kind} checkpoint in {folder} restores. Tried, newest first:\n  {tried}{moved}\n"
      f"If they were written with another config, use that config or a new --workdir; if "
      f"the files are damaged, move {folder} away to start from scratch."
  )


def _restore_state(manager: ocp.CheckpointManager, step: int, template: Any,
                   composite: Callable[[Any], Any]) -> dict[str, Any]:
  """Restores one step into `template` (a TrainState); tolerates another optimizer state.

  When the saved optimizer state has another structure (the optimizer, gradient clipping,
  weight decay or the trainable part changed since it was written), everything else is
  restored and the optimizer state is `template`'s fresh one, with a warning. Any other
  mismatch raises.
  """
  try:
    return manager.restore(step, args=composite(ocp.args.StandardRestore(template)))
  except ValueError as error:
    if "tree structures do not match" not in str(error):
      raise
    restored = manager.restore(step, args=composite(ocp.args.StandardRestore()))
    restored = {key: restored[key] for key in restored.keys()}
    saved = restored["state"]
    fields = {name: saved[name] for name in saved if name != "opt_state"}
    expected = {name: getattr(template, name) for name in fields}
    if (set(saved) - {"opt_state"} != set(_state_fields(template)) - {"opt_state"}
        or jax.tree.structure(fields) != jax.tree.structure(expected)):
      raise
    for got, want in zip(jax.tree.leaves(fields), jax.tree.leaves(expected), strict=True):
      if np.shape(got) != np.shape(want):
        raise
    logging.warning(
        "The optimizer state saved at step %d has another structure than this config's "
        "optimizer (one of %s changed). Restored the parameters, batch statistics, step and "
        "data position; the optimizer state starts fresh.", step, ", ".join(OPTIMIZER_FIELDS))
    restored["state"] = template.replace(**{
        name: jax.tree.map(lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype),
                           fields[name], expected[name])
        for name in fields})
    return restored


def _state_fields(template: Any) -> list[str]:
  return [f.name for f in dataclasses.fields(template)
          if f.metadata.get("pytree_node", True)]


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
  directory = Path(workdir) / ("best" if check_which(which) == "best" else "checkpoints")
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


def _model_target(workdir: str | Path, config: Any, where: Any) -> dict[str, Any]:
  """Abstract {'params', 'batch_stats'} (shapes, dtypes, `where` sharding) of the model that
  wrote the workdir's checkpoints: built from its config.json (else `config`), so a
  fine-tuning config with another head still names the source model's arrays."""
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
