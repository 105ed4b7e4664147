"""Tests for samplecnn_jax.metrics: every expected number is worked out by hand in comments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sklearn.metrics

from samplecnn_jax import metrics


def per_class_f1(labels, scores, threshold):
  """sklearn's F1 of each class on its own (0 when it has no true and no predicted positive)."""
  return sklearn.metrics.f1_score(labels, metrics.binarize(scores, threshold), average=None,
                                  zero_division=0)

# --- Clip-level aggregation ---------------------------------------------------------------


def test_clip_level_scores_averages_segments_in_any_order():
  segment_scores = np.array([[0.2, 1.0], [0.9, 0.0], [0.4, 0.0], [0.1, 0.5], [0.6, 0.5]])
  clip_index = np.array([0, 2, 0, 1, 0])
  # Clip 0: rows 0, 2, 4 -> (0.2+0.4+0.6)/3 = 0.4, (1+0+0.5)/3 = 0.5.
  # Clip 1: row 3. Clip 2: row 1.
  expected = np.array([[0.4, 0.5], [0.1, 0.5], [0.9, 0.0]])
  np.testing.assert_allclose(metrics.clip_level_scores(segment_scores, clip_index, 3), expected)


def test_clip_level_scores_weighted_mean():
  segment_scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
  # Clip 0: rows 0 (weight 3) and 1 (weight 1) -> (3, 1) / 4. Clip 1: row 2 alone.
  got = metrics.clip_level_scores(segment_scores, np.array([0, 0, 1]), 2, np.array([3, 1, 7.0]))
  np.testing.assert_allclose(got, [[0.75, 0.25], [0.5, 0.5]])


def test_clip_without_segments_and_bad_indices_are_errors():
  scores = np.zeros((2, 3))
  with pytest.raises(ValueError, match="1 of 3 clips have no segment"):
    metrics.clip_level_scores(scores, np.array([0, 2]), 3)
  with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
    metrics.clip_level_scores(scores, np.array([0, 2]), 2)
  with pytest.raises(ValueError, match="integers of shape"):
    metrics.clip_level_scores(scores, np.array([0.0, 1.0]), 2)
  with pytest.raises(ValueError, match="NaN"):
    metrics.clip_level_scores(np.array([[np.nan]]), np.array([0]), 1)


# --- Tagging ------------------------------------------------------------------------------

# Tag 0: positives score {0.9, 0.3}, negatives {0.8, 0.1}. Of the 4 (pos, neg) pairs,
#   0.9>0.8, 0.9>0.1, 0.3>0.1 are ordered right, 0.3<0.8 is not: ROC-AUC = 3/4.
#   Ranked: 0.9 (+), 0.8 (-), 0.3 (+), 0.1 (-): precision 1 at recall 1/2, then 2/3 at recall 1,
#   AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
# Tag 1: positives {0.6, 0.7} above negatives {0.2, 0.4}: ROC-AUC = 1, AP = 1.
# Tag 2: no positive -> excluded. Tag 3: all positive -> excluded.
TAG_LABELS = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]])
TAG_SCORES = np.array(
    [[0.9, 0.2, 0.5, 0.1], [0.8, 0.6, 0.5, 0.2], [0.3, 0.7, 0.5, 0.3], [0.1, 0.4, 0.5, 0.4]]
)


def test_macro_roc_and_pr_auc_by_hand_excluding_one_class_tags():
  assert metrics.roc_auc(TAG_LABELS, TAG_SCORES) == pytest.approx((3 / 4 + 1) / 2)
  assert metrics.pr_auc(TAG_LABELS, TAG_SCORES) == pytest.approx((5 / 6 + 1) / 2)
  np.testing.assert_array_equal(metrics.scorable_tags(TAG_LABELS), [True, True, False, False])


def test_roc_auc_counts_a_tie_as_half():
  # One positive and one negative with the same score: the single pair counts 1/2.
  assert metrics.roc_auc(np.array([[1], [0]]), np.array([[0.5], [0.5]])) == pytest.approx(0.5)


def test_tagging_errors_are_clear():
  with pytest.raises(ValueError, match="No tag has both"):
    metrics.roc_auc(np.zeros((3, 2)), np.full((3, 2), 0.5))
  with pytest.raises(ValueError, match="same"):
    metrics.pr_auc(TAG_LABELS[:, :2], TAG_SCORES)
  with pytest.raises(ValueError, match="0s and 1s"):
    metrics.roc_auc(TAG_LABELS * 2, TAG_SCORES)


# --- Speech Commands: 31 training classes scored as 12 -------------------------------------

# Training classes: 0 silence, 1..10 the commands, 11..30 the other 20 words.
# Evaluation classes: 0 _silence_, 1 _unknown_, 2..11 the commands.
EVAL_MAP = [0] + list(range(2, 12)) + [1] * 20


def _one_hot_scores(predicted, num_classes=31):
  scores = np.full((len(predicted), num_classes), 0.01)
  scores[np.arange(len(predicted)), predicted] = 0.5
  return scores


def test_accuracy_maps_31_training_classes_to_12():
  truth = np.array([15, 1, 2, 0])
  scores = _one_hot_scores([20, 1, 15, 0])
  # Clip 0: 'bed'(15) predicted 'cat'(20): both `_unknown_` -> right in 12 classes only.
  # Clip 1: 'yes' -> 'yes', right. Clip 2: 'no'(2) -> 'bed' = unknown, wrong. Clip 3: right.
  assert metrics.accuracy(truth, scores, EVAL_MAP) == pytest.approx(3 / 4)
  assert metrics.accuracy(truth, scores) == pytest.approx(2 / 4)
  # The same truth given as one-hot rows, and as already-mapped evaluation classes.
  assert metrics.accuracy(np.eye(31)[truth], scores, EVAL_MAP) == pytest.approx(3 / 4)
  assert metrics.accuracy(np.array([1, 2, 3, 0]), scores, EVAL_MAP, labels_mapped=True) == (
      pytest.approx(3 / 4)
  )


def test_confusion_matrix_over_12_evaluation_classes():
  truth = np.array([15, 1, 2, 0])
  matrix = metrics.confusion_matrix(truth, _one_hot_scores([20, 1, 15, 0]), EVAL_MAP)
  expected = np.zeros((12, 12), int)
  expected[1, 1] = 1  # unknown -> unknown
  expected[2, 2] = 1  # yes -> yes
  expected[3, 1] = 1  # no -> unknown
  expected[0, 0] = 1  # silence -> silence
  np.testing.assert_array_equal(matrix, expected)
  json.dumps(matrix.tolist())


def test_accuracy_errors_are_clear():
  with pytest.raises(ValueError, match="one integer evaluation class for each of the 31"):
    metrics.accuracy(np.array([0]), _one_hot_scores([0]), EVAL_MAP[:30])
  with pytest.raises(ValueError, match=r"class indices in \[0, 31\)"):
    metrics.accuracy(np.array([31]), _one_hot_scores([0]), EVAL_MAP)
  with pytest.raises(ValueError, match="one-hot rows"):
    metrics.accuracy(np.array([[1, 1] + [0] * 29]), _one_hot_scores([0]))


# --- DCASE 2017 Task 4 A: instance-based F-score -------------------------------------------

# Threshold 0.5:
#   clip 0: truth {0},    scores (0.9, 0.6, 0.1) -> predicted {0, 1}: TP (0), FP (1)
#   clip 1: truth {1, 2}, scores (0.2, 0.7, 0.4) -> predicted {1}:    TP (1), FN (2)
#   clip 2: truth {0},    scores (0.3, 0.1, 0.2) -> predicted {}:     FN (0)
# Micro: TP 2, FP 1, FN 2 -> P = 2/3, R = 1/2, F = 2 (2/3)(1/2) / (2/3 + 1/2) = 4/7.
# Per class: 0: tp 1 fp 0 fn 1 -> P 1, R 1/2, F1 2/3; 1: tp 1 fp 1 fn 0 -> P 1/2, R 1, F1 2/3;
#   2: tp 0 fp 0 fn 1 -> P 0 (0/0), R 0, F1 0.
# Class-wise (official): mean P = 1/2, mean R = 1/2 -> F = 1/2. Macro F1 = (2/3 + 2/3 + 0)/3.
F_LABELS = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
F_SCORES = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.4], [0.3, 0.1, 0.2]])


def test_instance_f_score_worked_example():
  result = metrics.instance_f_score(F_LABELS, F_SCORES)
  assert result == pytest.approx(
      {
          "f_score": 4 / 7,
          "precision": 2 / 3,
          "recall": 1 / 2,
          "class_wise_f_score": 1 / 2,
          "class_wise_precision": 1 / 2,
          "class_wise_recall": 1 / 2,
          "macro_f1": 4 / 9,
      }
  )


def test_class_absent_everywhere_is_left_out_of_class_wise_but_not_macro_f1():
  # A 4th class with no true and no predicted positive: the official script never sees it,
  # so micro and class-wise numbers stay; the sklearn-style macro F1 counts it as F1 = 0.
  labels = np.concatenate([F_LABELS, np.zeros((3, 1), int)], axis=1)
  scores = np.concatenate([F_SCORES, np.full((3, 1), 0.1)], axis=1)
  result = metrics.instance_f_score(labels, scores)
  assert result["f_score"] == pytest.approx(4 / 7)
  assert result["class_wise_f_score"] == pytest.approx(1 / 2)
  assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 4)


def test_per_class_thresholds():
  # Thresholds (0.25, 0.8, 0.3): clip 0 predicts {0}, clip 1 {2}, clip 2 {0}.
  # TP 3 (clip 0 class 0, clip 1 class 2, clip 2 class 0), FP 0, FN 1 (clip 1 class 1):
  # P = 1, R = 3/4, F = 2 (3/4) / (7/4) = 6/7.
  result = metrics.instance_f_score(F_LABELS, F_SCORES, threshold=np.array([0.25, 0.8, 0.3]))
  assert result["f_score"] == pytest.approx(6 / 7)
  assert result["precision"] == 1.0
  assert result["recall"] == pytest.approx(3 / 4)
  with pytest.raises(ValueError, match="one per class"):
    metrics.instance_f_score(F_LABELS, F_SCORES, threshold=np.array([0.5, 0.5]))


def test_no_predictions_and_no_positives_give_zero_not_nan(recwarn):
  nothing = metrics.instance_f_score(F_LABELS, np.zeros_like(F_SCORES, dtype=float))
  assert nothing == {key: 0.0 for key in nothing}
  empty = metrics.instance_f_score(np.zeros((2, 3), int), np.zeros((2, 3)))
  assert empty == {key: 0.0 for key in empty}
  assert not [w for w in recwarn if "divide" in str(w.message) or "invalid" in str(w.message)]


def test_tuned_thresholds_never_lower_a_class_f1_on_the_tuning_data():
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]])
  scores = np.array(
      [[0.3, 0.9, 0.6], [0.4, 0.7, 0.2], [0.1, 0.8, 0.7], [0.2, 0.6, 0.1], [0.15, 0.2, 0.9]]
  )
  thresholds = metrics.tune_thresholds(labels, scores)
  # Class 0: positives 0.3, 0.4 above negatives <= 0.2: every t in (0.2, 0.3] gives F1 = 1;
  # of the grid points 0.21..0.30 the closest to 0.5 is 0.30.
  # Class 1: positives 0.7, 0.6; negatives 0.9, 0.8, 0.2: t in (0.2, 0.6] predicts all four of
  # 0.6..0.9: F1 = 2*2/(2+4) = 2/3; t = 0.9 predicts only a negative. Closest to 0.5: 0.5.
  # Class 2 has no positive: keeps the default 0.5.
  np.testing.assert_allclose(thresholds, [0.3, 0.5, 0.5])
  tuned = per_class_f1(labels, scores, thresholds)
  default = per_class_f1(labels, scores, 0.5)
  assert np.all(tuned >= default)
  assert tuned[0] == 1.0 and default[0] == 0.0
  assert (
      metrics.instance_f_score(labels, scores, thresholds)["f_score"]
      > metrics.instance_f_score(labels, scores, 0.5)["f_score"]
  )


def test_tune_thresholds_on_random_data_never_lowers_any_class_f1():
  rng = np.random.default_rng(0)
  labels = (rng.random((200, 6)) < 0.2).astype(int)
  scores = np.clip(0.3 * labels + rng.random((200, 6)) * 0.7, 0, 1)
  thresholds = metrics.tune_thresholds(labels, scores, grid=np.linspace(0.05, 0.95, 19))
  assert np.all(
      per_class_f1(labels, scores, thresholds)
      >= per_class_f1(labels, scores, 0.5) - 1e-12
  )


# --- Dispatcher ---------------------------------------------------------------------------


def test_compute_metrics_families_are_flat_and_json_serialisable():
  tagging = metrics.compute_metrics("pr_auc", TAG_LABELS, TAG_SCORES)
  assert tagging == pytest.approx({"roc_auc": 7 / 8, "pr_auc": 11 / 12, "num_excluded_tags": 2})
  assert metrics.compute_metrics("roc_auc", TAG_LABELS, TAG_SCORES) == tagging

  acc = metrics.compute_metrics(
      "accuracy", np.array([15, 1, 2, 0]), _one_hot_scores([20, 1, 15, 0]), eval_label_map=EVAL_MAP
  )
  assert acc == pytest.approx({"accuracy": 3 / 4, "accuracy_train_classes": 1 / 2})

  f = metrics.compute_metrics("f_score", F_LABELS, F_SCORES, threshold=0.5)
  assert set(f) == {
      "f_score", "precision", "recall", "class_wise_f_score", "class_wise_precision",
      "class_wise_recall", "macro_f1",
  }
  for result in (tagging, acc, f):
    assert json.loads(json.dumps(result)) == result


def test_compute_metrics_rejects_unknown_kind():
  with pytest.raises(ValueError, match="choose one of roc_auc, pr_auc, accuracy, f_score"):
    metrics.compute_metrics("loss", F_LABELS, F_SCORES)


# --- Bootstrap intervals over clips -------------------------------------------------------


def _tagging_data(rng, clips, tags, ties):
  labels = (rng.random((clips, tags)) < 0.3).astype(int)
  labels[:, 0] = 0  # A tag without positives: left out of the macro averages.
  scores = rng.random((clips, tags))
  return labels, (np.round(scores, 1) if ties else scores)


@pytest.mark.parametrize("ties", [False, True])
def test_resampled_metrics_give_the_reported_numbers_and_weights_act_as_repeated_clips(ties):
  rng = np.random.default_rng(0)
  labels, scores = _tagging_data(rng, 40, 6, ties)
  counts = rng.integers(0, 3, 40)  # Clip i drawn counts[i] times (0: left out).
  repeated = np.repeat(np.arange(40), counts)
  drawn = np.flatnonzero(counts)  # Each drawn clip once: `pr_auc` itself, ties and all.
  for key, reference in (("roc_auc", metrics.roc_auc), ("pr_auc", metrics.pr_auc),
                         ("f_score", lambda y, s: metrics.instance_f_score(y, s)["f_score"])):
    statistic = metrics.resampled_metric(key, labels, scores)
    assert statistic(np.ones(40)) == pytest.approx(reference(labels, scores), abs=1e-12), key
    assert statistic(counts > 0) == pytest.approx(
        reference(labels[drawn], scores[drawn]), abs=1e-12), key
    batch = np.stack([np.ones(40), counts])  # Vectorised over resamples.
    np.testing.assert_allclose(statistic(batch), [statistic(np.ones(40)), statistic(counts)])
    if key == "pr_auc":
      continue  # Repeated clips in AP are not ties: see the next test.
    assert statistic(counts) == pytest.approx(
        reference(labels[repeated], scores[repeated]), abs=1e-12), key
  classes = rng.integers(0, 4, 40)
  eval_label_map = [0, 1, 2, 2]
  statistic = metrics.resampled_metric("accuracy", classes, scores[:, :4],
                                       eval_label_map=eval_label_map)
  assert statistic(counts) == metrics.accuracy(classes[repeated], scores[repeated, :4],
                                               eval_label_map)


def test_resampled_pr_auc_ranks_the_copies_of_a_repeated_clip_one_after_another():
  rng = np.random.default_rng(1)
  labels, scores = _tagging_data(rng, 60, 4, ties=False)
  counts = rng.integers(0, 4, 60)
  repeated = np.repeat(np.arange(60), counts)
  # Copies a hair apart: sklearn then counts, at copy i, the copies up to i (not all of them).
  copies = np.concatenate([np.arange(k) for k in counts])
  apart = scores[repeated] + 1e-9 * copies[:, None]
  statistic = metrics.resampled_metric("pr_auc", labels, scores)
  assert statistic(counts) == pytest.approx(metrics.pr_auc(labels[repeated], apart), abs=1e-12)
  assert statistic(counts) < metrics.pr_auc(labels[repeated], scores[repeated])  # Tied: higher.


def test_resampled_auc_without_a_scorable_tag_is_nan_and_unknown_keys_are_errors():
  labels = np.array([[1, 0], [0, 1], [1, 0]])
  statistic = metrics.resampled_metric("roc_auc", labels, np.eye(3, 2))
  assert np.isnan(statistic(np.array([1, 0, 1])))  # Tag 0 all positive, tag 1 all negative.
  with pytest.raises(ValueError, match="accuracy, f_score, roc_auc, pr_auc"):
    metrics.resampled_metric("loss", labels, np.eye(3, 2))


def test_bootstrap_interval_contains_the_estimate_shrinks_with_clips_and_is_seeded():
  rng = np.random.default_rng(1)
  widths = []
  for clips in (50, 800):
    classes = rng.integers(0, 3, clips)
    scores = np.eye(3)[np.where(rng.random(clips) < 0.7, classes, (classes + 1) % 3)]
    statistic = metrics.resampled_metric("accuracy", classes, scores)
    low, high = metrics.bootstrap_interval(statistic, clips)
    assert low <= statistic(np.ones(clips)) <= high
    assert metrics.bootstrap_interval(statistic, clips) == (low, high)  # Seeded.
    assert metrics.bootstrap_interval(statistic, clips, seed=1) != (low, high)
    widths.append(high - low)
  # The standard error of a proportion falls as 1/sqrt(clips): 16x the clips, 1/4 the width.
  assert widths[1] < widths[0] / 2.5
  for separation in (0.0, 0.3):  # A model at chance too: AP's resamples are least biased there.
    labels, scores = _tagging_data(rng, 300, 8, ties=False)
    scores = np.clip(scores + separation * labels, 0, 1)
    for key in ("roc_auc", "pr_auc"):
      statistic = metrics.resampled_metric(key, labels, scores)
      low, high = metrics.bootstrap_interval(statistic, 300)
      assert low <= statistic(np.ones(300)) <= high, (key, separation)


def test_bootstrap_interval_leaves_out_undefined_resamples_and_needs_two_clips():
  # 4 clips, one positive: about a third of the resamples miss it (ROC-AUC undefined).
  labels = np.array([[1], [0], [0], [0]])
  statistic = metrics.resampled_metric("roc_auc", labels, np.array([[0.9], [0.1], [0.95], [0.2]]))
  low, high = metrics.bootstrap_interval(statistic, 4)
  assert 0.0 <= low <= statistic(np.ones(4)) <= high <= 1.0
  assert metrics.bootstrap_interval(statistic, 1) is None
