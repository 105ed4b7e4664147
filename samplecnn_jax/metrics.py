"""Evaluation metrics of the three paper tasks, on numpy arrays gathered after evaluation.

What is here: averaging segment scores into clip scores, macro ROC-AUC / PR-AUC over tags
(MagnaTagATune), 12-class accuracy and confusion matrix of a 31-class model (Speech
Commands), the official DCASE 2017 Task 4 subtask A instance-based F-score plus its
class-wise numbers, per-class threshold tuning, and `compute_metrics`, which returns the
flat, JSON-serialisable dict a run writes to `metrics_<split>.json`. Definitions follow
`shared/reference/MODELS.md` section 4.

What is not here: losses (computed in JAX by the training step), anything that reads data,
devices or files. All functions are pure; `scores` are probabilities (sigmoid or softmax
outputs), `labels` are 0/1 multi-hot matrices or class indices as each function says.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence

import numpy as np

# The one list of metric names: the config's `metric` field (and baseline's --metric) -> the
# family whose numbers `compute_metrics` reports.
METRIC_FAMILIES = {
    "roc_auc": "tagging",
    "pr_auc": "tagging",
    "accuracy": "accuracy",
    "f_score": "f_score",
}
METRICS = tuple(METRIC_FAMILIES)  # The valid metric names, in this order.
DEFAULT_THRESHOLD_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)  # 0.01, 0.02, ..., 0.99.


def _sklearn_metrics():
  """`sklearn.metrics`, imported on first use: it takes about a second to import, and every
  config file reads `METRICS` (through `config_base`) without scoring anything."""
  import sklearn.metrics

  return sklearn.metrics


# --- Input checks -------------------------------------------------------------------------


def _scores_matrix(scores: np.ndarray, name: str = "scores") -> np.ndarray:
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2:
    raise ValueError(f"{name} must be a (examples, classes) matrix, got shape {scores.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"{name} contains NaN or infinite values; check the model outputs.")
  return scores


def _multi_hot(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Checks a 0/1 label matrix against its scores and returns it as booleans."""
  labels = np.asarray(labels)
  if labels.shape != scores.shape:
    raise ValueError(
        f"labels {labels.shape} and scores {scores.shape} must have the same (examples, "
        f"classes) shape."
    )
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be a multi-hot matrix of 0s and 1s.")
  return labels.astype(bool)


def _class_indices(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Integer class labels from a vector of indices or a one-hot matrix."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    if labels.shape[1] != num_classes or not np.all(labels.sum(axis=1) == 1):
      raise ValueError(
          f"2-D labels must be one-hot rows over {num_classes} classes, got shape "
          f"{labels.shape} (or rows that do not sum to 1)."
      )
    labels = labels.argmax(axis=1)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"labels must be integer class indices (N,) or one-hot rows (N, C), got "
        f"{labels.dtype} {labels.shape}."
    )
  return labels.astype(np.int64)


# --- Clip-level aggregation ---------------------------------------------------------------


def clip_level_scores(
    segment_scores: np.ndarray, clip_index: np.ndarray, num_clips: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
  """Mean of the segment probabilities of each clip: `(segments, C) -> (num_clips, C)`.

  The paper scores a clip by averaging the outputs of its segments; `weights` (one > 0 per
  segment, `segments.segment_weights`) makes it a weighted mean. `clip_index[i]` is the
  clip (0..num_clips-1) segment i belongs to; segments may come in any order. A clip with
  no segment is an error (it would otherwise get a made-up score).
  """
  segment_scores = _scores_matrix(segment_scores, "segment_scores")
  clip_index = np.asarray(clip_index)
  if clip_index.shape != (segment_scores.shape[0],) or not np.issubdtype(
      clip_index.dtype, np.integer
  ):
    raise ValueError(
        f"clip_index must be integers of shape ({segment_scores.shape[0]},), got "
        f"{clip_index.dtype} {clip_index.shape}."
    )
  if clip_index.size and (clip_index.min() < 0 or clip_index.max() >= num_clips):
    raise ValueError(
        f"clip_index values must lie in [0, {num_clips}), got [{clip_index.min()}, "
        f"{clip_index.max()}]."
    )
  counts = np.bincount(clip_index, minlength=num_clips)
  if np.any(counts == 0):
    missing = np.flatnonzero(counts == 0)
    raise ValueError(
        f"{missing.size} of {num_clips} clips have no segment (first: {missing[:5].tolist()}); "
        f"every clip needs at least one scored segment."
    )
  weights = (np.ones(len(clip_index)) if weights is None
             else np.asarray(weights, np.float64).reshape(len(clip_index)))
  sums = np.zeros((num_clips, segment_scores.shape[1]), np.float64)
  np.add.at(sums, clip_index, segment_scores * weights[:, None])
  totals = np.bincount(clip_index, weights=weights, minlength=num_clips)
  return sums / totals[:, None]


# --- Tagging (MagnaTagATune): macro ROC-AUC and PR-AUC ------------------------------------


def scorable_tags(labels: np.ndarray) -> np.ndarray:
  """Boolean mask of the tags that have at least one positive and one negative example.

  ROC-AUC is undefined for the other tags (sklearn raises), so the macro averages below
  leave them out; report `(~mask).sum()` next to the averages.
  """
  labels = np.asarray(labels)
  positives = labels.sum(axis=0)
  return (positives > 0) & (positives < labels.shape[0])


def _tag_average(metric, labels: np.ndarray, scores: np.ndarray) -> float:
  scores = _scores_matrix(scores)
  labels = _multi_hot(labels, scores)
  mask = scorable_tags(labels)
  if not mask.any():
    raise ValueError(
        "No tag has both positive and negative examples in this split; the macro average "
        "is undefined."
    )
  return float(metric(labels[:, mask], scores[:, mask], average="macro"))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Macro (tag-wise) ROC-AUC over the tags that `scorable_tags` keeps, as sklearn computes it."""
  return _tag_average(_sklearn_metrics().roc_auc_score, labels, scores)


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Macro average precision (PR-AUC) over the tags that `scorable_tags` keeps (sklearn)."""
  return _tag_average(_sklearn_metrics().average_precision_score, labels, scores)


# --- Classification (Speech Commands): accuracy and confusion matrix -----------------------


def _check_range(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> None:
  if truth.shape != predicted.shape:
    raise ValueError(f"{truth.shape[0]} labels for {predicted.shape[0]} score rows.")
  if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
    raise ValueError(
        f"labels must be class indices in [0, {num_classes}), got [{truth.min()}, {truth.max()}]."
    )


def _mapped_predictions(
    labels: np.ndarray,
    scores: np.ndarray,
    eval_label_map: Sequence[int] | None,
    labels_mapped: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
  """(truth, prediction, number of classes) in the evaluation label space."""
  scores = _scores_matrix(scores)
  num_train = scores.shape[1]
  predicted = scores.argmax(axis=1)
  if eval_label_map is None:
    truth = _class_indices(labels, num_train)
    _check_range(truth, predicted, num_train)
    return truth, predicted, num_train
  label_map = np.asarray(eval_label_map)
  if label_map.shape != (num_train,) or not np.issubdtype(label_map.dtype, np.integer):
    raise ValueError(
        f"eval_label_map must list one integer evaluation class for each of the {num_train} "
        f"training classes, got {label_map.dtype} {label_map.shape}."
    )
  if label_map.min() < 0:
    raise ValueError("eval_label_map entries must be >= 0.")
  num_eval = int(label_map.max()) + 1
  limit = num_eval if labels_mapped else num_train
  truth = _class_indices(labels, limit)
  _check_range(truth, predicted, limit)
  if not labels_mapped:
    truth = label_map[truth]
  return truth, label_map[predicted], num_eval


def accuracy(
    labels: np.ndarray,
    scores: np.ndarray,
    eval_label_map: Sequence[int] | None = None,
    labels_mapped: bool = False,
) -> float:
  """Argmax accuracy, optionally in a coarser evaluation label space.

  Without `eval_label_map` this is plain argmax accuracy over the `scores` columns. With it
  (Speech Commands: 31 training classes scored as 12), the argmax over the training classes
  and the true class are both mapped through `eval_label_map` (training class -> evaluation
  class; the 20 non-command words all map to `_unknown_`) and then compared. Set
  `labels_mapped=True` when `labels` are already evaluation classes (e.g. the official
  12-folder test set). `labels` are class indices `(N,)` or one-hot rows `(N, C)`.
  """
  truth, predicted, _ = _mapped_predictions(labels, scores, eval_label_map, labels_mapped)
  if truth.size == 0:
    raise ValueError("accuracy of an empty set is undefined.")
  return float(np.mean(truth == predicted))


def confusion_matrix(
    labels: np.ndarray,
    scores: np.ndarray,
    eval_label_map: Sequence[int] | None = None,
    labels_mapped: bool = False,
) -> np.ndarray:
  """Counts `[true class, predicted class]` in the (mapped) label space, as in `accuracy`.

  Rows and columns cover every class of that space (all 12 for Speech Commands), so the
  matrix has the same shape on every split. `.tolist()` makes it JSON-serialisable.
  """
  truth, predicted, num_classes = _mapped_predictions(
      labels, scores, eval_label_map, labels_mapped
  )
  return _sklearn_metrics().confusion_matrix(truth, predicted, labels=np.arange(num_classes))


# --- Multi-label detection (DCASE 2017 Task 4 A): F-scores and thresholds ------------------


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator with 0/0 (and x/0) defined as 0, as the official script does."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  out = np.zeros(np.broadcast(numerator, denominator).shape)
  np.divide(numerator, denominator, out=out, where=denominator != 0)
  return out


def _f1(precision, recall):
  return _safe_ratio(2 * np.asarray(precision) * recall, np.asarray(precision) + recall)


def _thresholds(threshold: float | np.ndarray, num_classes: int) -> np.ndarray:
  thresholds = np.asarray(threshold, np.float64)
  if thresholds.ndim == 0:
    thresholds = np.full((num_classes,), float(thresholds))
  if thresholds.shape != (num_classes,):
    raise ValueError(
        f"threshold must be a number or one per class ({num_classes},), got {thresholds.shape}."
    )
  return thresholds


def binarize(scores: np.ndarray, threshold: float | np.ndarray = 0.5) -> np.ndarray:
  """The predicted label set of each example: `scores >= threshold` (per class if an array)."""
  scores = _scores_matrix(scores)
  return scores >= _thresholds(threshold, scores.shape[1])[None, :]


def instance_f_score(
    labels: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray = 0.5
) -> dict[str, float]:
  """The official DCASE 2017 Task 4 subtask A scores of thresholded clip probabilities.

  A clip's predicted labels are the classes with `score >= threshold` (`threshold`: a number
  or one per class). Returns:

  - `f_score`, `precision`, `recall`: the official instance-based (micro) numbers. TP, FP
    and FN are summed over all (clip, label) pairs; P = TP/(TP+FP), R = TP/(TP+FN),
    F = 2PR/(P+R), each 0 when its denominator is 0. `f_score` ranks the challenge.
  - `class_wise_precision`, `class_wise_recall`, `class_wise_f_score`: what the official
    script prints as "Class-based": per-class P and R over the classes that occur in the
    ground truth or the predictions (0/0 counts as 0), averaged, and
    F = 2 mean(P) mean(R) / (mean(P) + mean(R)) (not the mean of per-class F1).
  - `macro_f1`: the mean of per-class F1 over all classes (sklearn `average='macro'`,
    zero_division=0), for comparison with papers that report it.
  """
  scores = _scores_matrix(scores)
  truth = _multi_hot(labels, scores)
  predicted = binarize(scores, threshold)
  tp = np.sum(truth & predicted, axis=0)
  fp = np.sum(~truth & predicted, axis=0)
  fn = np.sum(truth & ~predicted, axis=0)

  precision = float(_safe_ratio(tp.sum(), tp.sum() + fp.sum()))
  recall = float(_safe_ratio(tp.sum(), tp.sum() + fn.sum()))

  class_precision = _safe_ratio(tp, tp + fp)
  class_recall = _safe_ratio(tp, tp + fn)
  occurring = (tp + fp + fn) > 0  # Classes the official script sees at all.
  mean_p = float(class_precision[occurring].mean()) if occurring.any() else 0.0
  mean_r = float(class_recall[occurring].mean()) if occurring.any() else 0.0
  return {
      "f_score": float(_f1(precision, recall)),
      "precision": precision,
      "recall": recall,
      "class_wise_f_score": float(_f1(mean_p, mean_r)),
      "class_wise_precision": mean_p,
      "class_wise_recall": mean_r,
      "macro_f1": float(np.mean(_f1(class_precision, class_recall))),
  }


def tune_thresholds(
    labels: np.ndarray,
    scores: np.ndarray,
    grid: Sequence[float] | np.ndarray | None = None,
    default: float = 0.5,
) -> np.ndarray:
  """One decision threshold per class, each maximising that class's F1 on these data.

  Meant for validation scores; apply the result to the test split with
  `instance_f_score(..., threshold=thresholds)`. For every class, each candidate of `grid`
  (default 0.01, 0.02, ..., 0.99) is scored by the class's own F1; the best one wins, ties
  going to the candidate closest to `default`. A class with no positive example here has
  F1 = 0 whatever the threshold, so it keeps `default`.

  Maximising each class's F1 is the usual "auto thresholding" of DCASE systems; it is not
  the same as maximising the micro F-score jointly, but it never lowers any class's F1 and
  in practice raises the micro score too.
  """
  scores = _scores_matrix(scores)
  truth = _multi_hot(labels, scores)
  grid = np.asarray(DEFAULT_THRESHOLD_GRID if grid is None else grid, np.float64)
  if grid.ndim != 1 or grid.size == 0:
    raise ValueError("grid must be a non-empty 1-D sequence of thresholds.")
  positives = truth.sum(axis=0)
  f1 = np.stack([  # (grid, classes)
      _safe_ratio(2 * np.sum(truth & (scores >= t), axis=0), positives + np.sum(scores >= t, 0))
      for t in grid
  ])
  best = f1.max(axis=0)
  tied = np.isclose(f1, best[None, :], rtol=0, atol=1e-12)
  distance = np.where(tied, np.abs(grid - default)[:, None], np.inf)
  thresholds = grid[distance.argmin(axis=0)]
  return np.where(positives > 0, thresholds, default)


# --- One entry point for the training loop ------------------------------------------------


def compute_metrics(
    kind: str,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float | np.ndarray = 0.5,
    eval_label_map: Sequence[int] | None = None,
    labels_mapped: bool = False,
) -> dict[str, float]:
  """The flat, JSON-serialisable numbers of a metric family, for clip-level scores.

  `kind` is the config's `metric` field. The keys returned by family:

  - `roc_auc` / `pr_auc` (multi-hot labels): `roc_auc`, `pr_auc` (macro over tags) and
    `num_excluded_tags` (tags without a positive or without a negative, left out of both).
  - `accuracy` (class indices or one-hot): `accuracy` (in the `eval_label_map` space when
    given, e.g. 12-class Speech Commands) and, when a map is given and the labels are
    training classes, `accuracy_train_classes` (plain argmax over all training classes).
    The confusion matrix is `confusion_matrix(...)`, not a number, so it is not in here.
  - `f_score` (multi-hot labels): `f_score`, `precision`, `recall` (official micro),
    `class_wise_f_score`, `class_wise_precision`, `class_wise_recall`, `macro_f1`; see
    `instance_f_score`. `threshold` is a number or one per class.
  """
  family = METRIC_FAMILIES.get(kind)
  if family is None:
    raise ValueError(
        f"No metrics for metric={kind!r}; choose one of {', '.join(METRICS)} "
        f"(the loss is computed by the training step, not here)."
    )
  if family == "tagging":
    return {
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": pr_auc(labels, scores),
        "num_excluded_tags": int((~scorable_tags(labels)).sum()),
    }
  if family == "accuracy":
    result = {"accuracy": accuracy(labels, scores, eval_label_map, labels_mapped)}
    if eval_label_map is not None and not labels_mapped:
      result["accuracy_train_classes"] = accuracy(labels, scores)
    return result
  return instance_f_score(labels, scores, threshold)


# --- Bootstrap intervals over clips -------------------------------------------------------

# The headline numbers of each metric family: what gets an interval (`<key>_ci95`) and what a
# table prints. F-score's threshold variants and the per-class numbers are not headlines.
HEADLINE = {
    "accuracy": ("accuracy",),
    "f_score": ("f_score",),
    "roc_auc": ("roc_auc", "pr_auc"),
    "pr_auc": ("roc_auc", "pr_auc"),
}
BOOTSTRAP_RESAMPLES = 1000  # Resamples of the clips per interval (>= 1,000; see docs/reporting.md).
BOOTSTRAP_SEED = 0  # Seed of the resampling: the same predictions always give the same interval.
CONFIDENCE = 0.95  # Coverage of the intervals (the `_ci95` keys).
_CHUNK_ELEMENTS = 1_000_000  # resamples x clips x classes per step of the AUC statistics.
_INDEX_ELEMENTS = 4_000_000  # resamples x clips of the index arrays scipy draws at once.


def resampled_metric(
    key: str,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float | np.ndarray = 0.5,
    eval_label_map: Sequence[int] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
  """`statistic(counts)`: the metric `key` of the clips, each drawn `counts[..., i]` times.

  `counts` is `(..., N)` (N = the clips of `labels` / `scores`), the result `(...)`; all ones
  (and any 0/1 counts) gives the number `compute_metrics` reports on those clips, to
  floating-point rounding, and a clip drawn k times counts as k clips (for `pr_auc`, k copies
  ranked one after another rather than tied, which keeps resampled APs from drifting
  upwards). This is what the bootstrap evaluates for every resample, so it is vectorised: the
  clips are sorted once per class, and a resample only re-weights them (no sklearn call, no
  sort per resample).

  `key`: `accuracy` (class indices or one-hot rows, through `eval_label_map` as `accuracy`
  does), `f_score` (the official micro F-score at `threshold`: one number or one per class),
  `roc_auc` or `pr_auc` (macro over the tags that have a positive and a negative among the
  drawn clips, as `scorable_tags` does for the whole split; NaN when no tag has both). Class
  indices are scored as one-hot rows by all but `accuracy`.
  """
  scores = _scores_matrix(scores)
  labels = np.asarray(labels)
  if key == "accuracy":
    truth, predicted, _ = _mapped_predictions(labels, scores, eval_label_map, False)
    correct = (truth == predicted).astype(np.float64)
    return lambda counts: _weighted_mean(counts, correct)
  if key not in ("f_score", "roc_auc", "pr_auc"):
    raise ValueError(f"No resampled metric {key!r}; choose one of accuracy, f_score, roc_auc, "
                     f"pr_auc.")
  if labels.ndim == 1:
    labels = np.eye(scores.shape[1], dtype=np.int64)[_class_indices(labels, scores.shape[1])]
  truth = _multi_hot(labels, scores)
  if key == "f_score":
    predicted = binarize(scores, threshold)
    per_clip = np.stack([np.sum(truth & predicted, axis=1), np.sum(~truth & predicted, axis=1),
                         np.sum(truth & ~predicted, axis=1)]).astype(np.float64)  # (3, N)
    return functools.partial(_resampled_f_score, per_clip=per_clip)
  return functools.partial(_resampled_tag_average, ranked=_RankedTags.of(truth, scores),
                           precision=key == "pr_auc")


def _weighted_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
  counts = np.asarray(counts, np.float64)
  return (counts @ values) / counts.sum(axis=-1)


def _resampled_f_score(counts: np.ndarray, per_clip: np.ndarray) -> np.ndarray:
  """2 TP / (2 TP + FP + FN) of the summed counts: the official P, R and F (0 when empty)."""
  tp, fp, fn = np.moveaxis(np.asarray(counts, np.float64) @ per_clip.T, -1, 0)
  return _safe_ratio(2 * tp, 2 * tp + fp + fn)


@dataclasses.dataclass(frozen=True)
class _RankedTags:
  """Each tag's clips sorted by score once, and where its positives and their runs of tied
  scores sit, so that a resample needs one cumulative sum over all clips and otherwise
  touches only the positives (a few percent of the clips for most tags)."""

  order: np.ndarray  # (C, N): clip indices by ascending score, tag by tag.
  clip: np.ndarray  # (P,): the clip of each positive (tag-major, ascending score).
  tag: np.ndarray  # (P,): its tag.
  run_start: np.ndarray  # (P,): rank of the first clip scored as the positive is (ties).
  run_end: np.ndarray  # (P,): one past the rank of the last one.
  pos_start: np.ndarray  # (P,): index of the first of its tag's positives in that run.
  pos_end: np.ndarray  # (P,): one past the index of the last one.
  tag_bounds: np.ndarray  # (C + 1,): each tag's positives are [tag_bounds[c], tag_bounds[c+1]).

  @classmethod
  def of(cls, truth: np.ndarray, scores: np.ndarray) -> _RankedTags:
    num_clips = len(scores)
    order = np.argsort(scores.T, axis=1, kind="stable")
    ranked = np.take_along_axis(scores.T, order, axis=1)
    new_run = np.ones(ranked.shape, bool)
    new_run[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    ranks = np.arange(num_clips)
    starts = np.maximum.accumulate(np.where(new_run, ranks, 0), axis=1)
    ends_after = np.ones(ranked.shape, bool)  # Whether a run ends at this rank.
    ends_after[:, :-1] = new_run[:, 1:]
    ends = np.minimum.accumulate(np.where(ends_after, ranks + 1, num_clips)[:, ::-1],
                                 axis=1)[:, ::-1]
    tag, rank = np.nonzero(np.take_along_axis(truth.T, order, axis=1))
    run_start, run_end = starts[tag, rank], ends[tag, rank]
    key = tag * (num_clips + 1) + rank  # Ascending: positives are tag-major, by rank.
    return cls(order, order[tag, rank], tag, run_start, run_end,
               np.searchsorted(key, tag * (num_clips + 1) + run_start),
               np.searchsorted(key, tag * (num_clips + 1) + run_end),
               np.searchsorted(tag, np.arange(order.shape[0] + 1)))


def _resampled_tag_average(counts: np.ndarray, ranked: _RankedTags,
                           precision: bool) -> np.ndarray:
  """Macro ROC-AUC (Mann-Whitney U with ties as halves) or average precision, by weights."""
  counts = np.asarray(counts, np.float64)
  batch_shape, n = counts.shape[:-1], counts.shape[-1]
  counts = counts.reshape(-1, n)
  chunk = max(1, _CHUNK_ELEMENTS // max(1, ranked.order.size))
  out = np.concatenate([_tag_average_of_weights(counts[i:i + chunk], ranked, precision)
                        for i in range(0, len(counts), chunk)])
  return out.reshape(batch_shape)


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
  """(B, K) -> (B, K + 1): entry i holds the sum of values[:, :i]."""
  out = np.zeros((values.shape[0], values.shape[1] + 1))
  np.cumsum(values, axis=1, out=out[:, 1:])
  return out


def _tag_average_of_weights(counts: np.ndarray, ranked: _RankedTags,
                            precision: bool) -> np.ndarray:
  num_tags, num_clips = ranked.order.shape
  # Weight of the clips below each rank, tag by tag: (B, C, N + 1), entry r = ranks < r.
  below = np.zeros((len(counts), num_tags, num_clips + 1))
  np.cumsum(counts[:, ranked.order], axis=-1, out=below[..., 1:])
  weight = counts[:, ranked.clip]  # (B, P): each positive's weight.
  pos_cum = _exclusive_cumsum(weight)  # (B, P + 1), over all tags' positives in a row.
  first = pos_cum[:, ranked.tag_bounds[ranked.tag]]  # Before the tag's first positive.
  total = below[:, :, -1]  # (B, C): all drawn clips.
  total_pos = pos_cum[:, ranked.tag_bounds[1:]] - pos_cum[:, ranked.tag_bounds[:-1]]
  all_below = below[:, ranked.tag, ranked.run_start]  # Clips scored below the positive.
  pos_below = pos_cum[:, ranked.pos_start] - first  # Positives scored below it.
  if precision:
    # Precision at each positive's score: positives / clips scored at least as high. The k
    # copies of a clip drawn k times are ranked one after another (their order among
    # themselves does not matter: they are all positives), so copy i counts the copies
    # before it, not all k: (others + i) / (all others + i). Counting all k at every copy (the
    # ties of sklearn on repeated rows) biases resampled APs upwards, by up to the width of
    # the interval. A clip drawn once scores as in `pr_auc`.
    others = total_pos[:, ranked.tag] - pos_below - weight
    all_others = total[:, ranked.tag] - all_below - weight
    terms = np.zeros_like(weight)
    for copy in range(1, int(weight.max(initial=0)) + 1):
      terms += np.where(weight >= copy, (others + copy) / (all_others + copy), 0.0)
  else:  # Each positive beats the negatives below it and ties with half of those equal to it.
    neg_below = all_below - pos_below
    neg_upto = (below[:, ranked.tag, ranked.run_end]
                - (pos_cum[:, ranked.pos_end] - first))
    terms = weight * (neg_below + neg_upto) / 2
  summed = _exclusive_cumsum(terms)
  per_tag = summed[:, ranked.tag_bounds[1:]] - summed[:, ranked.tag_bounds[:-1]]  # (B, C)
  total_neg = total - total_pos
  denominator = total_pos if precision else total_pos * total_neg
  per_tag = _safe_ratio(per_tag, denominator)
  scorable = (total_pos > 0) & (total_neg > 0)
  num_scorable = scorable.sum(axis=-1)
  average = np.sum(np.where(scorable, per_tag, 0.0), axis=-1) / np.maximum(num_scorable, 1)
  return np.where(num_scorable > 0, average, np.nan)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    num_clips: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
  """The percentile bootstrap interval of `statistic` over `num_clips` clips.

  `statistic(counts)` is a `resampled_metric` (or a difference or mean of several, which makes
  the interval paired: every term sees the same resampled clips). `scipy.stats.bootstrap`
  draws `resamples` samples of the clip indices with replacement (seeded); the interval is
  the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of the statistic over them.
  Resamples where the statistic is undefined (NaN: an AUC with no tag that has both a
  positive and a negative among the drawn clips) are left out; None when fewer than 2 clips
  or than half of the resamples give a number.
  """
  import scipy.stats

  if num_clips < 2:
    return None

  def on_indices(indices: np.ndarray, axis: int = -1) -> np.ndarray:
    indices = np.moveaxis(np.asarray(indices), axis, -1)
    flat = indices.reshape(-1, num_clips)
    offsets = (np.arange(len(flat)) * num_clips)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.size).reshape(flat.shape)
    return statistic(counts).reshape(indices.shape[:-1])

  with warnings.catch_warnings():  # NaN resamples are handled below.
    warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
    result = scipy.stats.bootstrap(
        (np.arange(num_clips),), on_indices, n_resamples=resamples, vectorized=True,
        method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed),
        batch=max(1, _INDEX_ELEMENTS // num_clips))
  low, high = result.confidence_interval
  if np.isfinite(low) and np.isfinite(high):
    return float(low), float(high)
  values = result.bootstrap_distribution[np.isfinite(result.bootstrap_distribution)]
  if values.size < resamples / 2:
    return None
  tail = (1 - confidence) / 2 * 100
  return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))
