"""Training: the jitted data-parallel train step and the loop around it.

Reads top to bottom: learning rates, the train state and the schedule's bookkeeping,
`train_step`, the `Run` that `setup` builds once (config, workdir, opened store, mesh, model,
compiled steps), then `train_and_evaluate(config, workdir)`, which trains, validates as it
goes, keeps the latest and best checkpoints, follows the paper's staged schedule, and finally
scores the best checkpoint on the test split. Scoring a split (`evaluate.Evaluator`), the loss
and the eval-only mode (`evaluate.evaluate_checkpoint`) live in `evaluate.py`.

Where training starts is decided in one place, `restore_state`: resume (the workdir's
latest checkpoint, exactly: state, data iterator, bookkeeping) > init_from (another run's
weights, layer by layer: `transfer.py`) > from scratch (config.seed).

SIGTERM or SIGINT (preemption, Ctrl-C) stops the loop between two steps: the latest
checkpoint is saved at that step, on every process at the same one (`preemption.py`), and
`preemption.Preempted` is raised.
"""


import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics as clu_metrics
from clu import parameter_overview
from flax import struct

from samplecnn_jax import (
  checkpointing,
  evaluate,
  input_pipeline,
  models,
  preemption,
  sharding,
  store,
  tracking,
  transfer,
  workdir_files,
)
from samplecnn_jax import metrics as task_metrics

# --- Config checks ---------------------------------------------------------------------------


def check_store_splits(config: ml_collections.ConfigDict, data: store.Store) -> None:
  """Fails before any training when a split the run will need later is missing or empty.

  Without this a store with no validation split trains `steps_per_eval` steps (an hour of
  CPU with the defaults) and then crashes at the first validation, having saved nothing.
  """
  splits = data.manifest.splits
  have = ", ".join(f"{name} ({info.num_clips} clips)" for name, info in sorted(splits.items()))
  for field in ("train_split", "eval_split", "test_split"):
    name = config[field]
    if name not in splits or not splits[name].num_clips:
      fix = ("re-run `prepare` with a split column/list that has it (prepare csv: a `split` "
             "value of train, valid or test per row; prepare folder: --valid_fraction)")
      raise ValueError(
          f"config.{field}={name!r}, but the store {data.path} has no clips in a split of that "
          f"name; it has: {have}. Point --config.{field} at one of these, or {fix}."
      )
  noise = input_pipeline.BACKGROUND_NOISE_SPLIT
  if config.augment.noise_prob > 0 and (noise not in splits or not splits[noise].num_clips):
    raise ValueError(
        f"config.augment.noise_prob={config.augment.noise_prob} mixes in background noise, but "
        f"the store {data.path} has no {noise!r} split (it has: {have}); only stores prepared "
        f"from Speech Commands have one. Set --config.augment.noise_prob=0, or prepare a store "
        f"whose audio includes a _background_noise_ folder (prepare speech_commands)."
    )


# --- Label smoothing and learning rates ------------------------------------------------------


def smooth_labels(labels: jax.Array, smoothing: float, label_type: str) -> jax.Array:
  """Label smoothing: multi_class toward uniform over K, multi_label toward 0.5; 0 = off."""
  if smoothing <= 0:
    return labels
  target = 0.5 if label_type == "multi_label" else 1.0 / labels.shape[-1]
  return labels * (1.0 - smoothing) + smoothing * target


def learning_rate(
    config: ml_collections.ConfigDict, step: jax.Array, stage: jax.Array, stage_step: jax.Array
) -> jax.Array:
  """The learning rate of the next update.

  staged: lr * factor^stage / (1 + decay * steps_in_stage), i.e. Keras SGD's per-step decay
  restarted with each stage's fresh optimizer (MODELS.md 2); cosine: warm-up then cosine
  decay over num_train_steps; constant: lr / (1 + decay * step).
  """
  if config.schedule == "staged":
    base = config.learning_rate * config.stage_lr_factor ** stage.astype(jnp.float32)
    return base / (1.0 + config.lr_decay * stage_step)
  if config.schedule == "cosine":
    if config.warmup_steps <= 0:  # The same curve; optax warns on a 0-step warm-up.
      return optax.cosine_decay_schedule(config.learning_rate, max(config.num_train_steps, 1))(
          step)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps,
        max(config.num_train_steps, config.warmup_steps + 1),
    )
    return schedule(step)
  return config.learning_rate / (1.0 + config.lr_decay * step)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer with its learning rate as an injectable hyperparameter (set every step).

  With config.trainable=head or trunk_lr_factor != 1, the trunk and the head get their own
  optimizer (`transfer.partitioned`); gradient clipping still sees the whole gradient.
  """
  partition = not (config.trainable == "all" and config.trunk_lr_factor == 1.0)

  def build(learning_rate):
    parts = []
    if config.grad_clip_norm > 0 and not partition:
      parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == "sgd":
      if config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay))
      parts.append(optax.sgd(learning_rate, momentum=config.momentum, nesterov=config.nesterov))
    elif config.optimizer == "adam":
      parts.append(optax.adam(learning_rate))
    else:
      parts.append(optax.adamw(learning_rate, weight_decay=config.weight_decay))
    return optax.chain(*parts)

  if not partition:  # The optimizer state keeps its structure, so old checkpoints load.
    return optax.inject_hyperparams(build)(learning_rate=config.learning_rate)
  update = transfer.partitioned(config, build)

  def build_clipped(learning_rate):
    clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm > 0 else []
    return optax.chain(*clip, update(learning_rate))

  return optax.inject_hyperparams(build_clipped)(learning_rate=config.learning_rate)


# --- Train state and schedule bookkeeping ----------------------------------------------------


class TrainState(struct.PyTreeNode):
  """Everything the jitted step reads and writes; checkpointed whole."""

  step: jax.Array  # Updates applied so far, over all stages.
  params: Any
  batch_stats: Any
  opt_state: Any
  stage: jax.Array  # Stage of the staged schedule (0-based).
  stage_step: jax.Array  # Updates since the current stage (and its optimizer) began.
  rng: jax.Array  # Base key for dropout; folded with the step.
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array
) -> TrainState:
  """Initialises parameters, batch statistics and the optimizer from `rng`.

  One jitted function, so initialisation costs one compile instead of one per operation.
  """
  tx = create_optimizer(config)

  def init(rng: jax.Array) -> TrainState:
    init_rng, dropout_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, config.input_size), jnp.float32)
    variables = model.init(init_rng, dummy, train=False)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        stage=jnp.zeros((), jnp.int32),
        stage_step=jnp.zeros((), jnp.int32),
        rng=dropout_rng,
        apply_fn=model.apply,
        tx=tx,
    )

  return jax.jit(init)(rng)


def model_variables(state: TrainState) -> dict[str, Any]:
  """What evaluation and inference read: {'params', 'batch_stats'}."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def restart_stage(state: TrainState, best: TrainState) -> TrainState:
  """Next stage of the staged schedule: the best weights, a fresh optimizer state."""
  return state.replace(
      params=best.params,
      batch_stats=best.batch_stats,
      opt_state=state.tx.init(best.params),
      stage=state.stage + 1,
      stage_step=jnp.zeros((), jnp.int32),
  )


@dataclasses.dataclass
class Schedule:
  """The host-side bookkeeping of the staged schedule, checkpointed as JSON (`to_json`).

  The JSON keys are those of checkpoints written before this class existed, so they load.
  """

  best_value: float | None = None  # Best validation value of config.best_metric so far.
  best_step: int | None = None  # The step that reached it (the best checkpoint).
  evals_without_improvement: int = 0  # Since the best, within the current stage.
  stage_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  done: bool = False  # The last stage ended: training stops early.

  @classmethod
  def from_json(cls, meta: dict[str, Any]) -> "Schedule":
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in names})

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def improves(self, value: float, metric: str) -> bool:
    if self.best_value is None or math.isnan(self.best_value):
      return True
    return value < self.best_value if metric == "loss" else value > self.best_value

  def record(self, value: float, step: int, metric: str) -> bool:
    """Counts one validation result; True when it is the new best."""
    if self.improves(value, metric):
      self.best_value, self.best_step, self.evals_without_improvement = value, step, 0
      return True
    self.evals_without_improvement += 1
    return False

  def end_stage(self, stage: int, step: int, last: bool) -> None:
    """Records the end of `stage` at `step`; the last stage ends training."""
    self.stage_history.append({"stage": stage, "end_step": step, "best_step": self.best_step})
    if last:
      self.done = True
    else:
      self.evals_without_improvement = 0


# --- Steps ------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


def train_step(
    state: TrainState, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[TrainState, TrainMetrics]:
  """One optimisation step on a global batch (jitted over the mesh by the caller)."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        batch["audio"],
        train=True,
        rngs={"dropout": dropout_rng},
        mutable=["batch_stats"],
    )
    labels = smooth_labels(batch["label"], config.label_smoothing, config.label_type)
    loss = evaluate.loss_per_example(logits, labels, config.label_type).mean()
    return loss, updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  lr = learning_rate(config, state.step, state.stage, state.stage_step)
  opt_state = state.opt_state._replace(
      hyperparams={**state.opt_state.hyperparams, "learning_rate": jnp.asarray(lr, jnp.float32)}
  )
  updates, opt_state = state.tx.update(grads, opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=transfer.keep_frozen_stats(config, state.batch_stats, batch_stats),
      opt_state=opt_state,
      stage_step=state.stage_step + 1,
  )
  metrics = TrainMetrics.single_from_model_output(
      loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=lr
  )
  return new_state, metrics


def batch_statistics(
    variables: dict[str, Any], batch: dict[str, jax.Array], model: nn.Module, seed: int
) -> Any:
  """The BatchNorm statistics of one batch in train mode, as training computes them.

  A momentum-0 clone of the model stores the batch's own mean and variance instead of a
  running average; dropout is on (train mode), with a fixed key so the result is repeatable.
  """
  _, updates = model.clone(bn_momentum=0.0).apply(
      variables, batch["audio"], train=True,
      rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"],
  )
  return updates["batch_stats"]


def recalibrate_batch_stats(run: "Run", state: TrainState) -> TrainState:
  """Replaces the running BN statistics with the exact mean over N training batches.

  With `config.bn_recalibration_batches` = N > 0, the statistics evaluation and the best
  checkpoint use match the current weights instead of lagging them (a running average with
  momentum 0.99 remembers ~100 steps of older weights, which short runs never outgrow).
  The batches come from their own seed's stream (seed + 1), read by index, so the training
  iterator and resumption are untouched. Parameters are not updated. N = 0: unchanged.
  With config.trainable=head only the head's statistics are recomputed.
  """
  config = run.config
  num = int(config.bn_recalibration_batches)
  if num <= 0:
    return state
  batches = input_pipeline.train_batches(config, run.store, seed=config.seed + 1)
  variables = model_variables(state)
  total = None
  for k in range(num):
    batch = sharding.global_batch(batches[k], run.mesh)
    stats = run.steps.batch_statistics(variables, batch)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  recalibrated = jax.tree.map(lambda x: x / num, total)
  # A frozen trunk (trainable=head) keeps its loaded statistics; only the head's are redone.
  return state.replace(
      batch_stats=transfer.keep_frozen_stats(config, state.batch_stats, recalibrated))


class CompiledSteps(NamedTuple):
  train_step: Callable  # (state, batch) -> (state, TrainMetrics); donates the state.
  eval_step: Callable  # (variables, batch) -> (probabilities, losses), sharded over `data`.
  batch_statistics: Callable  # (variables, batch) -> train-mode BN statistics of the batch.


def compile_steps(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, model: nn.Module
) -> CompiledSteps:
  """The jitted train and eval steps: state replicated, batches split over `data`."""
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_sharded(mesh)
  train_step_fn = jax.jit(
      functools.partial(train_step, config=config),
      in_shardings=(replicated, data_sharding),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
  )
  eval_step_fn = evaluate.compile_eval_step(config, mesh, model)
  stats_fn = jax.jit(
      functools.partial(batch_statistics, model=model, seed=int(config.seed)),
      in_shardings=(replicated, data_sharding),
      out_shardings=replicated,
  )
  return CompiledSteps(train_step_fn, eval_step_fn, stats_fn)


# --- The run ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """What the training loop, its validations and its test scoring share, built and checked
  once by `setup`."""

  config: ml_collections.ConfigDict
  workdir: str
  store: store.Store
  mesh: jax.sharding.Mesh
  model: nn.Module
  steps: CompiledSteps


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config against itself, the store, the devices and the workdir; compiles.

  Every check raises ValueError (or OSError) in one line naming the field and the fix,
  before anything is written. The config's auto fields are derived from the store first
  (`adapt.resolve`): the resolved config is the run's (`Run.config`, `WORKDIR/config.json`).
  """
  config, data = evaluate.resolved_run(config)
  input_pipeline.check_train_segments(config.train_segments)
  transfer.validate_config(config)
  check_store_splits(config, data)
  mesh = sharding.create_mesh(tuple(config.mesh_shape), tuple(config.mesh_axes))
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  try:
    checkpointing.check_config_matches(workdir, config)
  except workdir_files.DamagedFileError as error:  # `_train` moves it aside and rewrites it.
    logging.warning("%s", error)
  tracking.check_available(config)
  model = models.create_model(config.model, config.num_classes)
  return Run(config, str(workdir), data, mesh, model, compile_steps(config, mesh, model))


# --- Logging ----------------------------------------------------------------------------------


class Progress:
  """Steps/s, examples/s and ETA since the last report; logs and writes TensorBoard scalars."""

  def __init__(self, config, workdir: str, start_step: int):
    self.config = config
    self.writer, self.tracker = None, tracking.Tracker()
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))
      self.tracker = tracking.start(config, workdir)
    self.last_step, self.last_time = start_step, time.perf_counter()

  def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
    if self.writer is None:
      return
    for key, value in values.items():
      if isinstance(value, int | float) and math.isfinite(value):
        self.writer.add_scalar(f"{prefix}/{key}", value, step)
    self.writer.flush()
    self.tracker.log(step, values, prefix)

  def compiled(self, step: int) -> None:
    """Logs the first step's time (mostly compilation) and starts the steps/s clock after it."""
    now = time.perf_counter()
    logging.info("First train step (compilation included) took %.1f s; steps/s starts after it.",
                 now - self.last_time)
    self.last_step, self.last_time = step, now

  def report(self, step: int, values: dict[str, float]) -> None:
    now = time.perf_counter()
    if step == self.last_step:  # Right after `compiled`: no timed steps yet.
      logging.info("step %d/%d | loss %.4f | lr %.3g", step, self.config.num_train_steps,
                   values["loss"], values["learning_rate"])
      self.scalars(step, values, "train")
      return
    steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    remaining = (self.config.num_train_steps - step) / max(steps_per_sec, 1e-9)
    values = dict(values, steps_per_sec=steps_per_sec,
                  examples_per_sec=steps_per_sec * self.config.batch_size)
    logging.info(
        "step %d/%d | loss %.4f | lr %.3g | %.2f steps/s | %.1f examples/s | ETA %s",
        step, self.config.num_train_steps, values["loss"], values["learning_rate"],
        steps_per_sec, values["examples_per_sec"], _format_seconds(remaining),
    )
    self.scalars(step, values, "train")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    self.tracker.close()


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- The loop ---------------------------------------------------------------------------------


def restore_state(
    run: Run, ckpt: checkpointing.Checkpointer, train_iter: input_pipeline.TrainIterator
) -> tuple[TrainState, Schedule]:
  """The replicated state and bookkeeping training continues from (sets `train_iter` too).

  Precedence: resume from the workdir's latest checkpoint (config.init_from is then
  ignored: the run already started from it) > config.init_from (matching layers of another
  run, the rest initialised with config.seed) > from scratch with config.seed.
  """
  config = run.config
  state = create_train_state(config, run.model, jax.random.key_data(jax.random.key(config.seed)))
  template = sharding.replicate(state, run.mesh)
  restored = ckpt.restore_latest(template, train_iter, validate=_non_finite_reason)
  if restored is not None:
    state, meta = restored
    logging.info("Resumed from step %d (stage %d) in %s", int(state.step), int(state.stage),
                 run.workdir)
    if config.init_from:
      logging.info("config.init_from=%s is ignored: %s holds checkpoints, so it resumes.",
                   config.init_from, run.workdir)
    schedule = Schedule.from_json(meta)
    _check_best(ckpt, template, schedule, int(state.step))
    return sharding.replicate(state, run.mesh), schedule
  if config.init_from:
    loaded = transfer.load_into(config, model_variables(state))
    state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                          opt_state=state.tx.init(loaded["params"]))
    return sharding.replicate(state, run.mesh), Schedule()
  logging.info("Starting from scratch in %s", run.workdir)
  return sharding.replicate(state, run.mesh), Schedule()


def _non_finite_reason(state: TrainState) -> str | None:
  """Why a restored state cannot be trained on, or None (it is finite)."""
  if bool(_is_finite(state.params, state.batch_stats)):
    return None
  return "its parameters or batch statistics hold NaN/Inf"


def _check_best(ckpt: checkpointing.Checkpointer, template: TrainState,
                schedule: Schedule, step: int) -> None:
  """On resume, a best checkpoint that does not restore is moved to damaged/ and forgotten.

  The next validation then saves a new best, instead of the run failing at the end of a
  stage or at the test evaluation hours later. A best written after `step` (the run got
  further before its newer latest checkpoints were damaged) is unknown to `schedule`: if it
  restores it is moved to superseded/ (`Checkpointer.set_aside_best_after`), and the resumed
  run saves its own, the same one after an exact resume.
  """
  if ckpt.best_step() is not None:
    newer = ckpt.best_step() > step
    try:
      ckpt.restore_best(template, validate=_non_finite_reason)  # Moves it to damaged/.
    except checkpointing.DamagedCheckpointError as error:
      logging.warning("%s\nThe next validation saves a new best checkpoint.", error)
      if not newer:  # The schedule's own best is gone; a newer one was never its.
        schedule.best_value = schedule.best_step = None
  ckpt.set_aside_best_after(step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming if it holds checkpoints; scores the best on test.

  Args:
    config: a run config (see `configs/`).
    workdir: where checkpoints, TensorBoard logs, config.json and metrics_*.json go.

  Returns:
    The test-split metrics of the best checkpoint (also in `workdir/metrics_test.json`).

  Raises:
    preemption.Preempted: SIGTERM or SIGINT arrived (on any process); every process finished
      the same step, saved the latest checkpoint there and skipped what was left
      (validations, test scoring). A rerun resumes from that step exactly.
  """
  run = setup(config, workdir)  # Checks config and store before anything is written.
  lock = workdir_files.exclusive(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, preemption.StopSignals() as signals:
    return _train(run, signals)


def _train(run: Run, signals: preemption.StopSignals) -> dict[str, Any]:
  """The loop of `train_and_evaluate`, run while this process holds the workdir."""
  config, workdir = run.config, run.workdir
  train_iter = input_pipeline.create_train_iterator(config, run.store, seed=config.seed)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  evaluator = evaluate.Evaluator(config, run.store, run.mesh, run.steps.eval_step)
  state, schedule = restore_state(run, ckpt, train_iter)
  if jax.process_index() == 0:  # Only once the restore worked: it describes these checkpoints.
    workdir_files.set_aside_damaged(workdir)  # Kept in damaged/, then written anew.
    workdir_files.write_config(workdir, config)
    labels = workdir_files.LabelInfo.from_json(run.store.manifest.label_record(),
                                               run.store.path)
    workdir_files.write_labels(workdir, labels)
    parameter_overview.log_parameter_overview(state.params)
  logging.info("Mesh %s over %d devices, %d processes; global batch %d",
               dict(run.mesh.shape), jax.device_count(), jax.process_count(), config.batch_size)

  progress = Progress(config, workdir, int(state.step))
  stop = preemption.StopAgreement(signals, run.mesh)
  try:
    train_metrics = None
    step = first_step = int(state.step)
    saved = ckpt.latest_step()  # The step the newest latest checkpoint holds.
    while step < config.num_train_steps and not schedule.done:
      if stop.poll():  # Between steps: after the last one's validation and save, if any.
        break
      batch = sharding.global_batch(next(train_iter), run.mesh)
      state, step_metrics = run.steps.train_step(state, batch)
      train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
      step += 1
      if step == first_step + 1:  # Compile time is reported apart, not in steps/s.
        jax.block_until_ready(step_metrics)
        progress.compiled(step)
      at_eval = step % config.steps_per_eval == 0 or step == config.num_train_steps
      if at_eval or step % config.log_every_steps == 0:
        values = {k: float(v) for k, v in train_metrics.compute().items()}
        train_metrics = None
        _stop_unless_finite(values["loss"], step, ckpt, workdir)
        progress.report(step, values)
      if at_eval:
        state = _validate(run, evaluator, ckpt, progress, state, schedule)
      if at_eval or step % config.checkpoint_every_steps == 0:
        saved = _save_latest(state, train_iter, schedule, ckpt, workdir)
    if stop.now():  # Preempted: save where every process stopped; no evaluation follows.
      if saved != step:
        saved = _save_latest(state, train_iter, schedule, ckpt, workdir)
      ckpt.wait()
      raise preemption.Preempted(signals.received or "a signal to another process", step,
                                 workdir)
    ckpt.wait()

    result = _evaluate_best_on_test(run, evaluator, ckpt, state)
    progress.scalars(result["step"], {k: v for k, v in result.items() if k != "step"},
                     config.test_split)
  finally:  # Also on errors (NaN, interrupts): flush TensorBoard, finish async saves.
    progress.close()
    ckpt.close()
  return result


def _save_latest(state: TrainState, train_iter: input_pipeline.TrainIterator,
                 schedule: Schedule, ckpt: checkpointing.Checkpointer, workdir: str) -> int:
  """Saves a resumable checkpoint (state, data iterator, bookkeeping); returns its step.

  The same for a periodic save and the one on a stop signal, so either resumes exactly.
  """
  _stop_unless_state_finite(state, ckpt, workdir)
  ckpt.save(state, train_iter, schedule.to_json())
  return int(state.step)


def _stop_unless_finite(loss: float, step: int, ckpt: checkpointing.Checkpointer,
                        workdir: str) -> None:
  """The NaN guard on the logged loss: stops naming the last good checkpoint."""
  if not math.isfinite(loss):
    _diverged(f"Training loss became {loss} by step {step}", ckpt, workdir)


@jax.jit
def _is_finite(params: Any, batch_stats: Any) -> jax.Array:
  """True when every parameter and batch statistic is finite (one reduction on device)."""
  leaves = jax.tree.leaves((params, batch_stats))
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _stop_unless_state_finite(state: TrainState, ckpt: checkpointing.Checkpointer,
                              workdir: str) -> None:
  """The NaN guard at every save: a non-finite state is never written as latest or best."""
  if not bool(_is_finite(state.params, state.batch_stats)):
    _diverged(f"Parameters or batch statistics became NaN/Inf by step {int(state.step)}",
              ckpt, workdir)


def _diverged(what: str, ckpt: checkpointing.Checkpointer, workdir: str) -> None:
  ckpt.wait()
  last = ckpt.latest_step()
  kept = (f"The last finite checkpoint (step {last}) is kept in {workdir}; a re-run resumes "
          f"from it" if last is not None else
          f"No checkpoint was written yet in {workdir}, so a re-run starts from scratch")
  raise FloatingPointError(
      f"{what}: training diverged. {kept}. Lower the learning rate "
      f"(--config.learning_rate), enable clipping (--config.grad_clip_norm=1.0) or use "
      f"float32 (--config.model.dtype=float32)."
  )


def _validate(run: Run, evaluator: evaluate.Evaluator, ckpt: checkpointing.Checkpointer,
              progress: Progress, state: TrainState, schedule: Schedule) -> TrainState:
  """Scores the validation split, keeps the best checkpoint, and ends a stage on patience."""
  config, step = run.config, int(state.step)
  state = recalibrate_batch_stats(run, state)
  result, _ = evaluator.evaluate(model_variables(state), config.eval_split,
                                 config.max_eval_batches)
  logging.info("step %d | %s: %s", step, config.eval_split, evaluate.summary(result))
  progress.scalars(step, result, config.eval_split)
  evaluate.write_metrics(run.workdir, config.eval_split, step, result)
  if schedule.record(result[config.best_metric], step, config.best_metric):
    _stop_unless_state_finite(state, ckpt, run.workdir)
    ckpt.save_best(state, schedule.to_json())
  if config.schedule == "staged" and schedule.evals_without_improvement >= config.patience:
    state = _next_stage(run, ckpt, state, schedule)
  return state


def _next_stage(run: Run, ckpt: checkpointing.Checkpointer, state: TrainState,
                schedule: Schedule) -> TrainState:
  """Ends a stage: reload the best checkpoint, lr x factor, fresh optimizer; or stop."""
  config, stage = run.config, int(state.stage)
  last = stage + 1 >= config.num_stages
  schedule.end_stage(stage, int(state.step), last)
  if last:
    logging.info("Stage %d/%d ended without improvement: training is done.", stage + 1,
                 config.num_stages)
    return state
  best = _best_or(ckpt, state, run.mesh)
  state = sharding.replicate(restart_stage(state, best), run.mesh)
  logging.info("Stage %d begins at step %d from the best checkpoint (step %s), lr %.3g",
               stage + 2, int(state.step), schedule.best_step,
               config.learning_rate * config.stage_lr_factor ** (stage + 1))
  return state


def _best_or(ckpt: checkpointing.Checkpointer, state: TrainState,
             mesh: jax.sharding.Mesh) -> TrainState:
  """The best checkpoint's state, else (none written, or it does not restore) `state`."""
  if not ckpt.has_best():
    return state
  try:
    best, _ = ckpt.restore_best(sharding.replicate(state, mesh), validate=_non_finite_reason)
  except checkpointing.DamagedCheckpointError as error:
    logging.warning("%s\nUsing the current state (step %d) instead.", error, int(state.step))
    return state
  return sharding.replicate(best, mesh)


def _evaluate_best_on_test(run: Run, evaluator: evaluate.Evaluator,
                           ckpt: checkpointing.Checkpointer, state: TrainState) -> dict[str, Any]:
  """Scores the best checkpoint (else `state`) on the test split; F1 thresholds tuned on valid."""
  config = run.config
  state = _best_or(ckpt, state, run.mesh)
  variables = model_variables(state)
  thresholds = None
  if config.tune_thresholds and config.metric == "f_score":
    _, valid = evaluator.evaluate(variables, config.eval_split)
    thresholds = task_metrics.tune_thresholds(valid["labels"], valid["scores"])
  result, test = evaluator.evaluate(variables, config.test_split)
  if thresholds is not None:
    tuned = task_metrics.compute_metrics("f_score", test["labels"], test["scores"],
                                         threshold=thresholds)
    result.update({f"tuned_{k}": v for k, v in tuned.items()})
    result["tuned_thresholds"] = [float(t) for t in thresholds]
  result.update(evaluator.intervals(test, thresholds))
  result["step"] = int(state.step)
  path = evaluate.write_metrics(run.workdir, config.test_split, int(state.step), result,
                                evaluator.predictions(test))
  logging.info("Best checkpoint (step %d) on %s: %s -> %s", int(state.step), config.test_split,
               evaluate.summary(result), path)
  return result
