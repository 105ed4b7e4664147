"""Scoring a model on a split of its store: the eval step, `Evaluator`, `score_clips`, eval-only.

`score_clips(labels, scores, metric)` turns clip labels and clip scores into the record a run
writes to `metrics_<split>.json`; `Evaluator` (what `train` validates with and scores the test
split with) and `baseline` both call it, so that their JSON files have the same keys.
`score_intervals` adds the 95% bootstrap interval over clips of each headline number
(`<metric>_ci95`), and `write_metrics` writes the clip scores behind a final score
(`predictions_<split>.npz`, `workdir_files.Predictions`) beside the JSON.
`evaluate_checkpoint(config, workdir, split, checkpoint)` is the eval-only job
(`python -m samplecnn_jax.main --mode=eval`): it scores a workdir's best or latest
checkpoint, reading only the model's variables (no optimizer state is built).

What is not here: training and its schedule (`train.py`, which imports this module, never the
other way round), the definitions of the metrics and of the bootstrap (`metrics.py`),
checkpoint files (`checkpointing.py`) and the other files of a workdir (`workdir_files.py`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from samplecnn_jax import (
  adapt,
  checkpointing,
  config_base,
  input_pipeline,
  metrics,
  models,
  sharding,
  workdir_files,
)
from samplecnn_jax import store as store_lib

# --- The evaluation step ---------------------------------------------------------------------


def loss_per_example(logits: jax.Array, labels: jax.Array, label_type: str) -> jax.Array:
  """Sigmoid BCE averaged over classes (multi-label) or softmax CE (multi-class).

  The loss training minimises (`train.train_step`) and evaluation reports.
  """
  if label_type == "multi_label":
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
  return optax.softmax_cross_entropy(logits, labels)


def eval_step(
    variables: dict[str, Any], batch: dict[str, jax.Array], model: nn.Module, label_type: str
) -> tuple[jax.Array, jax.Array]:
  """Per-segment class probabilities and losses in inference mode (running BN statistics)."""
  logits = model.apply(variables, batch["audio"], train=False)
  return (models.probabilities(logits, label_type),
          loss_per_example(logits, batch["label"], label_type))


def compile_eval_step(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, model: nn.Module
) -> Callable:
  """`eval_step` jitted over the mesh: variables replicated, batches split over `data`."""
  data_sharding = sharding.batch_sharded(mesh)
  return jax.jit(
      functools.partial(eval_step, model=model, label_type=config.label_type),
      in_shardings=(sharding.replicated(mesh), data_sharding),
      out_shardings=(data_sharding, data_sharding),
  )


# --- Scoring clips ---------------------------------------------------------------------------


def score_clips(
    labels: np.ndarray, scores: np.ndarray, metric: str, *,
    eval_label_map: list[int] | None = None, f_score_threshold: float = 0.5,
) -> dict[str, Any]:
  """The metrics record of clip scores: `num_clips` and the numbers of `metric`.

  `labels` are class indices (N,) or multi-hot rows (N, C); `scores` are (N, C) clip
  probabilities. `accuracy` is scored in the `eval_label_map` space when one is given and adds
  `confusion_matrix` (rows: true class, columns: predicted); the tagging metrics and the
  F-score (at `f_score_threshold`) score class indices as one-hot rows.
  """
  labels = np.asarray(labels)
  result: dict[str, Any] = {"num_clips": int(len(labels))}
  if metric == "accuracy":
    options = {"eval_label_map": eval_label_map}
    result.update(metrics.compute_metrics(metric, labels, scores, **options))
    result["confusion_matrix"] = metrics.confusion_matrix(labels, scores, **options).tolist()
    return result
  if labels.ndim == 1:
    labels = np.eye(np.shape(scores)[1], dtype=np.int64)[labels]
  options = {"threshold": f_score_threshold} if metric == "f_score" else {}
  result.update(metrics.compute_metrics(metric, labels, scores, **options))
  return result


def score_intervals(
    labels: np.ndarray, scores: np.ndarray, metric: str, *,
    eval_label_map: list[int] | None = None, f_score_threshold: float = 0.5,
    tuned_thresholds: np.ndarray | None = None,
    resamples: int = metrics.BOOTSTRAP_RESAMPLES, seed: int = metrics.BOOTSTRAP_SEED,
) -> dict[str, list[float]]:
  """`<key>_ci95: [low, high]` for each headline number of `score_clips(labels, scores, metric)`.

  A seeded percentile bootstrap over the clips (`metrics.bootstrap_interval`): it says how much
  the number would move on another draw of as many clips from the same population, not how
  much it moves between training seeds. With `tuned_thresholds` (per-class F-score thresholds
  tuned on validation) it adds `tuned_f_score_ci95`, the thresholds held fixed. A number whose
  interval is undefined (fewer than 2 clips) gets no key.
  """
  options = {"threshold": f_score_threshold, "eval_label_map": eval_label_map}
  statistics = {key: metrics.resampled_metric(key, labels, scores, **options)
                for key in metrics.HEADLINE[metric]}
  if tuned_thresholds is not None:
    statistics["tuned_f_score"] = metrics.resampled_metric(
        "f_score", labels, scores, threshold=tuned_thresholds)
  result = {}
  for key, statistic in statistics.items():
    interval = metrics.bootstrap_interval(statistic, len(labels), resamples=resamples, seed=seed)
    if interval is not None:
      result[f"{key}_ci95"] = [interval[0], interval[1]]
  return result


class Evaluator:
  """Scores splits of a run's store; reads each split's clip labels once and keeps them."""

  def __init__(self, config: ml_collections.ConfigDict, store: store_lib.Store,
               mesh: jax.sharding.Mesh, step: Callable):
    """`step(variables, batch) -> (probabilities, losses)`: `compile_eval_step`'s result."""
    self.config, self.store, self.mesh, self.step = config, store, mesh, step
    self._clip_labels: dict[str, tuple[list[str], np.ndarray]] = {}

  def clip_labels(self, split: str) -> tuple[list[str], np.ndarray]:
    if split not in self._clip_labels:
      self._clip_labels[split] = self.store.clip_labels(split, self.config.num_classes)
    return self._clip_labels[split]

  def evaluate(
      self, variables: dict[str, Any], split: str, max_batches: int = 0
  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Scores `split`: segment-level loss and the task metric on clip-averaged predictions.

    `variables` ({'params', 'batch_stats'}) must be replicated over the mesh. Returns
    (metrics, arrays) where arrays holds the clip ids, scores and labels (for threshold
    tuning, intervals and predictions: `intervals`, `predictions`).
    """
    config, mesh = self.config, self.mesh
    clip_ids, clip_labels = self.clip_labels(split)
    outputs, masks, indices, weights = [], [], [], []
    sample = input_pipeline.eval_sample(len(clip_ids), max_batches, config)
    if sample is not None:
      logging.info("Scoring %s on %d of its %d clips (config.max_eval_batches=%d): one drawn "
                   "from each of %d equal blocks of the split, the same clips every time.",
                   split, len(sample), len(clip_ids), max_batches, len(sample))
    batches = input_pipeline.create_eval_iterator(config, self.store, split, clips=sample)
    for batch in batches:
      masks.append(_gather_local(batch.pop("mask"), mesh))
      indices.append(_gather_local(batch.pop("clip_index"), mesh))
      weights.append(_gather_local(batch.pop("weight"), mesh))
      # Results stay on device until the loop ends, so steps are dispatched ahead of reading.
      outputs.append(self.step(variables, sharding.global_batch(batch, mesh)))
    # Every process sees the whole split's predictions (small: segments x classes).
    mask = np.concatenate(masks)
    probs = np.concatenate([sharding.to_host(p) for p, _ in outputs])[mask]
    losses = np.concatenate([sharding.to_host(loss) for _, loss in outputs])[mask]
    clip_index = np.concatenate(indices)[mask]
    weight = np.concatenate(weights)[mask]
    seen = np.unique(clip_index)
    if sample is not None:  # A sample scores only its clips.
      remap = np.searchsorted(seen, clip_index)
      clip_scores = metrics.clip_level_scores(probs, remap, len(seen), weight)
      labels, ids = clip_labels[seen], [clip_ids[i] for i in seen]
    else:
      clip_scores = metrics.clip_level_scores(probs, clip_index, len(clip_ids), weight)
      labels, ids = clip_labels, clip_ids
    result = {"loss": float(losses.mean()), "num_clips": int(len(labels)),
              "num_segments": int(len(losses))}
    result.update(score_clips(labels, clip_scores, config.metric,
                              eval_label_map=self.store.manifest.eval_label_map,
                              f_score_threshold=config.f_score_threshold))
    return result, {"scores": clip_scores, "labels": labels, "clip_ids": np.asarray(ids)}

  def intervals(self, arrays: dict[str, np.ndarray],
                tuned_thresholds: np.ndarray | None = None) -> dict[str, list[float]]:
    """`score_intervals` of `evaluate`'s arrays, scored as `evaluate` scored them."""
    return score_intervals(arrays["labels"], arrays["scores"], self.config.metric,
                           eval_label_map=self.store.manifest.eval_label_map,
                           f_score_threshold=self.config.f_score_threshold,
                           tuned_thresholds=tuned_thresholds)

  def predictions(self, arrays: dict[str, np.ndarray]) -> workdir_files.Predictions:
    """The `predictions_<split>.npz` record of `evaluate`'s arrays."""
    return workdir_files.Predictions.of(
        arrays["clip_ids"], arrays["labels"], arrays["scores"],
        label_type=self.store.manifest.label_type, metric=self.config.metric,
        f_score_threshold=self.config.f_score_threshold,
        eval_label_map=self.store.manifest.eval_label_map)


def _gather_local(local: np.ndarray, mesh: jax.sharding.Mesh) -> np.ndarray:
  """A per-process numpy slice of a batch field, gathered to the global batch on every host."""
  if jax.process_count() == 1:
    return np.asarray(local)
  return sharding.to_host(sharding.global_batch({"x": local}, mesh)["x"])


def summary(result: dict[str, Any]) -> str:
  """The numbers of a metrics record, for a log line; those with an interval as
  "accuracy 0.600 (95% CI 0.49-0.71, 75 clips)"."""
  parts = []
  for key, value in result.items():
    if not isinstance(value, float):
      continue
    interval = result.get(f"{key}_ci95")
    if interval is None:
      parts.append(f"{key} {value:.4f}")
    else:
      parts.append(f"{key} {value:.3f} (95% CI {interval[0]:.2f}-{interval[1]:.2f}, "
                   f"{result.get('num_clips', '?')} clips)")
  return ", ".join(parts)


def write_metrics(workdir: str, split: str, step: int, values: dict[str, Any],
                  predictions: workdir_files.Predictions | None = None) -> Path:
  """Writes `WORKDIR/metrics_<split>.json` and, when given, `predictions_<split>.npz` beside
  it (process 0 only, each atomically); returns the JSON's path."""
  if jax.process_index() == 0:
    if predictions is not None:
      predictions.save(workdir_files.predictions_path(workdir, split))
    return workdir_files.write_metrics(workdir, split, step, values)
  return workdir_files.metrics_path(workdir, split)


# --- The eval-only job -----------------------------------------------------------------------


def open_store(config: ml_collections.ConfigDict) -> store_lib.Store:
  """The run's store (`config.data_dir`), opened once. The caller derives the config's auto
  fields from it (`adapt.resolve`), then checks the config against it (`check_matches`).

  A data_dir that holds no prepared store raises one line naming the field and the command
  that prepares one.
  """
  path = input_pipeline.data_dir_for(config)
  if not (Path(path) / store_lib.MANIFEST).is_file():
    where = (f"config.data_dir={config.data_dir!r} is not a prepared store" if config.data_dir
             else f"config.data_dir is not set, and its default {path} is not a prepared store")
    raise ValueError(
        f"{where} (no {store_lib.MANIFEST} there). Prepare one with `python -m "
        f"samplecnn_jax.prepare DATASET --src RAW_DIR --out STORE` (the demo: `python -m "
        f"samplecnn_jax.prepare demo --out STORE`) and pass --config.data_dir=STORE."
    )
  return store_lib.Store.open(path)


def resolved_run(config: ml_collections.ConfigDict
                 ) -> tuple[ml_collections.ConfigDict, store_lib.Store]:
  """(config with its auto fields derived from its store, the store), both checked: the one
  order of `open_store`, `adapt.resolve`, `validate_config` and `check_matches` that training
  and eval-only share."""
  data = open_store(config)
  config = adapt.resolve(config, data)  # A config file's auto fields (config.json has none).
  config_base.validate_config(config)
  data.check_matches(config)
  return config, data


def evaluate_checkpoint(
    config: ml_collections.ConfigDict | None, workdir: str, split: str,
    checkpoint: str = "best",
) -> dict[str, Any]:
  """Eval-only mode: scores a workdir's best or latest checkpoint on `split`.

  Args:
    config: the run config; None reads the one the run recorded (`WORKDIR/config.json`).
    workdir: a training workdir.
    split: the store's split to score.
    checkpoint: "best" or "latest".

  Returns:
    The metrics record, with `checkpoint` and the intervals (also written to
    `WORKDIR/metrics_<split>.json`; the clip scores to `WORKDIR/predictions_<split>.npz`).
    Every check (config values, store, split, devices, checkpoints) runs before anything is
    written.
  """
  checkpointing.check_which(checkpoint)
  if config is None:
    config = workdir_files.read_config(workdir)
  config, data = resolved_run(config)
  data.split_info(split)  # Raises, naming the splits the store has.
  mesh = sharding.create_mesh(tuple(config.mesh_shape), tuple(config.mesh_axes))
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  model = models.create_model(config.model, config.num_classes)
  loaded = checkpointing.read_checkpoint(workdir, config, checkpoint)  # Falls back if damaged.
  variables = sharding.replicate(loaded.variables, mesh)
  evaluator = Evaluator(config, data, mesh, compile_eval_step(config, mesh, model))
  result, arrays = evaluator.evaluate(variables, split)
  result.update(evaluator.intervals(arrays))
  step, checkpoint = loaded.step, loaded.which
  result["checkpoint"] = checkpoint
  if loaded.note:
    logging.warning("%s", loaded.note)
    result["checkpoint_note"] = loaded.note
  write_metrics(str(workdir), split, step, result, evaluator.predictions(arrays))
  logging.info("%s checkpoint (step %d) on %s: %s", checkpoint, step, split, summary(result))
  return result
