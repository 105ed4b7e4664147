"""Orbax checkpoints of a training run: the latest N for resuming, and the best one.

One checkpoint holds everything a run needs to continue exactly: the train state (params,
batch statistics, optimizer state, step, stage, RNG), the Grain iterator state, and a JSON
record of the host-side bookkeeping (best validation value, evaluations without improvement,
stage history). `workdir/checkpoints/` keeps the latest `keep` (saved asynchronously);
`workdir/best/` keeps the single best one by the validation number (saved synchronously so
the staged schedule can reload it at once). Orbax writes each checkpoint under a temporary
name and renames it when complete, so a run killed during a save resumes from the last
complete one.

Damage is never fatal where an older checkpoint restores, and nothing is deleted: training
moves a checkpoint that does not restore to `workdir/damaged/`, and a best checkpoint that a
resumed run would overwrite to `workdir/superseded/`. Readers (`read_checkpoint`: predict,
visualize, eval-only, init_from) fall back from a damaged best to the newest checkpoint that
restores, say which file was damaged, and move nothing (docs/faults.md).

This module does not decide when to save or what is best (`train.py` does), and reads the
workdir's other files (config.json, labels, metrics) through `workdir_files.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from samplecnn_jax import models, sharding, workdir_files
from samplecnn_jax.cli import CHECKPOINTS

# Config fields that change the shapes or meaning of what a checkpoint holds.
ARCHITECTURE_FIELDS = ("num_classes", "label_type", "input_size", "dataset")
# Config fields that change the structure of the optimizer state (not of the model).
OPTIMIZER_FIELDS = ("optimizer", "grad_clip_norm", "weight_decay", "trainable", "trunk_lr_factor")
# Where a best checkpoint goes that a resumed run would otherwise overwrite or outlive: one
# written after the step the run resumed from (its newer latest checkpoint was damaged).
SUPERSEDED_DIR = "superseded"


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
    """Replaces the best checkpoint with `state`.

    A best checkpoint at this step or a later one (written by an earlier run that got
    further: `set_aside_best_after` normally moves it on resume) is moved to
    `workdir/superseded/` first: Orbax would refuse the step (StepAlreadyExistsError) or keep
    the later step and drop this one.
    """
    step = int(state.step)
    for old in self.best.all_steps():
      if old >= step:
        moved = _move_aside(self.best, old, self.workdir, SUPERSEDED_DIR)
        logging.warning("A best checkpoint of step %d was already in %s; moved it to %s before "
                        "saving the best of step %d.", old, self.best.directory, moved, step)
    self.best.save(
        step,
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

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def set_aside_best_after(self, step: int) -> list[Path]:
    """Moves best checkpoints newer than `step` (the step a run resumes from) to
    `workdir/superseded/`, and returns where they went.

    They were written by a run that got further than the latest checkpoint that restores
    (the newer ones were damaged). Left in place, the resumed run's bookkeeping would not
    know them: it would save its own best over them (Orbax refuses a step that exists), or
    reload a best from another trajectory at a stage end. Moved, never deleted: after an
    exact resume the run writes the same best again; otherwise the user keeps both.
    """
    moved = []
    for old in sorted(self.best.all_steps()):
      if old > step:
        moved.append(_move_aside(self.best, old, self.workdir, SUPERSEDED_DIR))
        logging.warning("The best checkpoint of step %d was written after step %d, where this "
                        "run resumes; moved it to %s (kept; the run saves its own best).",
                        old, step, moved[-1])
    return moved

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


def _move_aside(manager: ocp.CheckpointManager, step: int, workdir: Path,
                into: str = workdir_files.DAMAGED_DIR) -> Path:
  """Moves a step out of the managed folder (into workdir/`into`/) and forgets it.

  Process 0 moves it; every process waits for the move and then reloads its manager.
  """
  source = Path(manager.directory) / str(step)
  name = f"{source.parent.name}_{step}"  # checkpoints_N or best_N.
  target, suffix = workdir / into / name, 1
  while target.exists():
    target, suffix = workdir / into / f"{name}.{suffix}", suffix + 1
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"move aside {source}")
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


def _folder(workdir: str | Path, which: str) -> Path:
  return Path(workdir) / ("best" if check_which(which) == "best" else "checkpoints")


def _open_read_only(workdir: str | Path, which: str) -> ocp.CheckpointManager | None:
  """A read-only manager of the best or latest checkpoints; None when the folder is missing."""
  directory = _folder(workdir, which)
  if not directory.is_dir():
    return None
  return ocp.CheckpointManager(
      directory.absolute(), options=ocp.CheckpointManagerOptions(read_only=True, create=False)
  )


def _steps(workdir: str | Path, which: str) -> list[int]:
  manager = _open_read_only(workdir, which)
  if manager is None:
    return []
  with _orbax_errors_quiet():  # A damaged step's metadata: its restore reports it.
    steps = list(manager.all_steps())
  manager.close()
  return steps


def _no_checkpoint(workdir: str | Path, which: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"No {which} checkpoint in {_folder(workdir, which)}. Train first with "
      f"`python -m samplecnn_jax.main --config=... --workdir={workdir}`."
  )


def checkpoint_step(workdir: str | Path, which: str = "best") -> int:
  """The step of a workdir's best or latest checkpoint."""
  steps = _steps(workdir, which)
  if not steps:
    raise _no_checkpoint(workdir, which)
  return max(steps)


def _model_target(workdir: str | Path, config: Any, where: Any) -> dict[str, Any]:
  """Abstract {'params', 'batch_stats'} (shapes, dtypes, `where` sharding) of the model that
  wrote the workdir's checkpoints: built from its config.json (else `config`), so a
  fine-tuning config with another head still names the source model's arrays."""
  try:
    config = workdir_files.read_config(workdir)
  except (FileNotFoundError, workdir_files.DamagedFileError):
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


def _load_step(workdir: str | Path, config: Any, which: str, step: int) -> dict[str, Any]:
  """{'params', 'batch_stats'} of one step of the best or latest checkpoints."""
  directory = _folder(workdir, which)
  # Arrays come back replicated over this job's devices: a checkpoint of a multi-host run
  # loads on one machine.
  anywhere = sharding.replicated(sharding.create_mesh())
  manager = _open_read_only(workdir, which)
  try:
    state = _restore_model_subtrees(manager, step, _model_target(workdir, config, anywhere))
  except ValueError as e:
    # The model built here does not name the checkpoint's arrays (no config.json and another
    # config, or a layer renamed since): read the whole state as saved, as before.
    logging.info("Partial restore of %s failed (%s); restoring the whole state.", directory, e)
    manager.close()
    manager = _open_read_only(workdir, which)  # A fresh manager: the first kept its handler.
    state = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=anywhere))
    )["state"]
  finally:
    manager.close()
  logging.info("Loaded %s checkpoint at step %d from %s", which, step, directory)
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def load_variables(workdir: str | Path, config: Any, which: str = "best",
                   check_config: bool = True) -> dict[str, Any]:
  """The model variables {'params', 'batch_stats'} of a workdir's newest best or latest
  checkpoint, exactly that one (no fallback: tests compare runs with it; readers use
  `read_checkpoint`).

  No optimizer or data state is built, and only the params and batch_stats arrays are read
  (a checkpoint whose optimizer state is damaged, missing or of another optimizer still
  loads). `check_config=False` skips the config check.
  """
  if check_config:
    check_config_matches(workdir, config)
  return _load_step(workdir, config, which, checkpoint_step(workdir, which))


@dataclasses.dataclass(frozen=True)
class ReadCheckpoint:
  """What `read_checkpoint` loaded and from where."""

  variables: dict[str, Any]  # {'params', 'batch_stats'}.
  which: str  # The kind loaded: "best" or "latest" (not always the one asked for).
  step: int
  path: Path  # The step's folder.
  note: str | None = None  # One line when it is not the newest of the kind asked for: why.


class UnreadableCheckpointError(DamagedCheckpointError, ValueError):
  """No checkpoint of a workdir restores for a reader (a ValueError: commands exit 2)."""


# Files of an Orbax step that hold JSON: one that does not parse is the damaged file.
_JSON_FILES = ("_CHECKPOINT_METADATA", "metadata", "_METADATA", "_sharding")


def damaged_file(step_dir: Path, error: BaseException | str) -> Path:
  """The file of a step that most likely made its restore fail, else the step's folder.

  TensorStore names the file it could not read or decode; Orbax's JSON errors do not, so
  the step's JSON files are parsed one by one.
  """
  step_dir = Path(step_dir).absolute()
  for name in re.findall(r'local file \\?"([^"\\]+)\\?"', str(error)):
    path = Path(name)
    if path.is_relative_to(step_dir) and not path.is_dir():
      return path
  unparsable = {}
  for path in sorted(step_dir.rglob("*")):
    if path.is_file() and (path.name in _JSON_FILES or path.suffix == ".json"
                           or path.parent.name == "array_metadatas"):
      try:
        json.loads(path.read_bytes().decode())
      except (ValueError, UnicodeDecodeError) as parse_error:
        unparsable[path] = str(parse_error)
  # The file whose parse error is the restore's error, else the first that does not parse.
  same = [path for path, text in unparsable.items() if text == str(error)]
  return (same or list(unparsable) or [step_dir])[0]


@contextlib.contextmanager
def _orbax_errors_quiet() -> Iterator[None]:
  """Silences Orbax's own log lines (absl logger) about a file it cannot parse."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def read_checkpoint(workdir: str | Path, config: Any, which: str = "best",
                    check_config: bool = True) -> ReadCheckpoint:
  """The model variables of a workdir for a reader (predict, visualize, eval-only, init_from).

  Tries the `which` checkpoints newest first, then the other kind's newest first: a damaged
  best (a truncated, deleted or garbled file, or NaN weights) falls back to the newest
  latest checkpoint that restores, and the result's `note` says which file was damaged and
  which checkpoint was used (the caller shows it: a command prints it, a library logs it). A reader never moves or deletes a
  file (training moves damaged checkpoints aside). Raises `UnreadableCheckpointError` (one
  line naming each damaged file and the way out) when none restores, FileNotFoundError when
  the workdir has no checkpoint.
  """
  check_which(which)
  if check_config:
    check_config_matches(workdir, config)
  order = [which] + [kind for kind in CHECKPOINTS if kind != which]
  candidates = [(kind, step) for kind in order
                for step in sorted(_steps(workdir, kind), reverse=True)]
  if not candidates:
    raise _no_checkpoint(workdir, which)
  failed: list[str] = []
  for kind, step in candidates:
    path = _folder(workdir, kind) / str(step)
    try:
      with _orbax_errors_quiet():  # Each failure is reported below, naming the file.
        variables = _load_step(workdir, config, kind, step)
      finite = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
      problem = None if finite else f"{path}: its weights hold NaN/Inf"
    except Exception as error:  # Any damage: JSON, tensorstore, metadata, missing files.
      problem = f"{damaged_file(path, error)} is damaged ({_reason(error)[:160]})"
    if problem is None:
      note = None
      if failed or kind != which:
        damage = "; ".join(failed) if failed else f"there is no {which} checkpoint"
        note = f"used the {kind} checkpoint of step {step} ({path}) because {damage}."
      return ReadCheckpoint(variables, kind, step, path, note)
    failed.append(f"{kind} step {step}: {problem}")
  raise UnreadableCheckpointError(
      f"no checkpoint of {workdir} restores: {'; '.join(failed)}. Nothing was moved. Restore "
      f"the files from a backup, or train again with a new --workdir (training in this workdir "
      f"moves a damaged checkpoint to {Path(workdir) / workdir_files.DAMAGED_DIR} when an older one restores)."
  )
