"""Tests for samplecnn_jax.evaluate: score_clips and score_intervals, the Evaluator's capped
validation, the predictions and intervals of training's test scoring and of the eval-only job,
and its one-line errors (before anything is written)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from conftest import tiny_config

from samplecnn_jax import evaluate, metrics, sharding, store, train, workdir_files


@pytest.fixture(scope="module")
def trained(demo_store, tmp_path_factory):
  """A workdir trained 3 steps on the demo store (latest checkpoint at step 3), and the test
  metrics and predictions training wrote (kept: eval-only tests may overwrite the files)."""
  path = tmp_path_factory.mktemp("trained")
  config = tiny_config(demo_store, num_train_steps=3)
  train.train_and_evaluate(config, str(path))
  written = (workdir_files.read_metrics(path, "test"),
             workdir_files.Predictions.load(workdir_files.predictions_path(path, "test")))
  return config, path, written


def assert_predictions_match(predictions, record, data_dir, split):
  """The predictions are the store's clips and labels, and give the record's numbers."""
  clip_ids, labels = store.Store.open(data_dir).clip_labels(split, predictions.scores.shape[1])
  assert predictions.clip_ids.tolist() == clip_ids and predictions.labels.dtype == np.uint8
  np.testing.assert_array_equal(predictions.labels, labels)
  assert predictions.metric == "f_score" and predictions.eval_label_map is None
  recomputed = metrics.compute_metrics("f_score", predictions.labels, predictions.scores,
                                       threshold=predictions.f_score_threshold)
  assert recomputed["f_score"] == pytest.approx(record["f_score"], abs=1e-12)
  low, high = record["f_score_ci95"]
  assert low <= record["f_score"] <= high


def test_score_clips_gives_the_numbers_of_the_metric_and_the_clip_count():
  labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
  scores = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.4], [0.8, 0.3, 0.2], [0.3, 0.1, 0.9]])
  record = evaluate.score_clips(labels, scores, "f_score", f_score_threshold=0.5)
  assert record == {"num_clips": 4,
                    **metrics.compute_metrics("f_score", labels, scores, threshold=0.5)}
  # Class indices are scored as one-hot rows by the tagging metrics.
  indices = np.array([0, 1, 2, 0])
  one_hot = np.eye(3, dtype=np.int64)[indices]
  assert evaluate.score_clips(indices, scores, "roc_auc") == evaluate.score_clips(
      one_hot, scores, "roc_auc")
  accuracy = evaluate.score_clips(indices, scores, "accuracy")
  assert accuracy["accuracy"] == 0.5 and np.trace(accuracy["confusion_matrix"]) == 2


def test_score_intervals_cover_the_headline_numbers_of_the_metric():
  rng = np.random.default_rng(0)
  labels = (rng.random((60, 4)) < 0.4).astype(int)
  scores = np.clip(0.5 * labels + 0.6 * rng.random((60, 4)), 0, 1)
  for metric, keys in (("roc_auc", {"roc_auc", "pr_auc"}), ("f_score", {"f_score"})):
    intervals = evaluate.score_intervals(labels, scores, metric)
    record = evaluate.score_clips(labels, scores, metric)
    assert set(intervals) == {f"{key}_ci95" for key in keys}
    for key in keys:
      assert intervals[f"{key}_ci95"][0] <= record[key] <= intervals[f"{key}_ci95"][1]
  tuned = evaluate.score_intervals(labels, scores, "f_score", tuned_thresholds=np.full(4, 0.3))
  assert set(tuned) == {"f_score_ci95", "tuned_f_score_ci95"}
  classes = labels.argmax(axis=1)
  assert set(evaluate.score_intervals(classes, scores, "accuracy")) == {"accuracy_ci95"}
  assert evaluate.score_intervals(classes[:1], scores[:1], "accuracy") == {}


def test_summary_gives_the_interval_and_the_clip_count():
  line = evaluate.summary({"loss": 1.25, "num_clips": 75, "accuracy": 0.6,
                           "accuracy_ci95": [0.4912, 0.7088]})
  assert line == "loss 1.2500, accuracy 0.600 (95% CI 0.49-0.71, 75 clips)"


def test_capped_validation_scores_an_even_seeded_sample_and_says_so(demo_store, tmp_path,
                                                                    caplog):
  config = tiny_config(demo_store)  # eval batch 8 = 4 clips of 2 segments.
  run = train.setup(config, str(tmp_path))
  state = train.create_train_state(config, run.model, np.zeros(2, np.uint32))
  variables = sharding.replicate(train.model_variables(state), run.mesh)
  evaluator = evaluate.Evaluator(run.config, run.store, run.mesh, run.steps.eval_step)
  with caplog.at_level(logging.INFO):
    result, arrays = evaluator.evaluate(variables, "valid", max_batches=1)
  assert "Scoring valid on 4 of its 12 clips" in caplog.text
  assert result["num_clips"] == 4 and len(arrays["labels"]) == 4


def test_training_writes_the_test_predictions_and_intervals(demo_store, trained):
  _, _, (record, predictions) = trained
  assert "checkpoint" not in record, "written by training, not by the eval-only job"
  assert_predictions_match(predictions, record, demo_store, "test")


@pytest.mark.slow
def test_eval_only_mode_scores_a_chosen_split(trained):
  config, tmp_path, _ = trained
  result = evaluate.evaluate_checkpoint(config, str(tmp_path), "valid", checkpoint="latest")
  saved = json.loads((tmp_path / "metrics_valid.json").read_text())
  assert saved["checkpoint"] == "latest" and saved["step"] == 3
  assert saved["f_score"] == pytest.approx(result["f_score"])


def test_eval_only_reads_the_recorded_config_when_none_is_given(demo_store, trained, caplog):
  config, tmp_path, _ = trained
  with caplog.at_level(logging.INFO):
    result = evaluate.evaluate_checkpoint(None, str(tmp_path), "test", checkpoint="latest")
  assert result["checkpoint"] == "latest" and result["num_clips"] == 12
  assert_predictions_match(
      workdir_files.Predictions.load(workdir_files.predictions_path(tmp_path, "test")),
      workdir_files.read_metrics(tmp_path, "test"), demo_store, "test")
  assert re.search(r"f_score \d\.\d{3} \(95% CI \d\.\d\d-\d\.\d\d, 12 clips\)", caplog.text)
  assert not list(tmp_path.glob("*.tmp*"))


def test_eval_only_errors_are_one_line_naming_the_fix(demo_store, trained, tmp_path):
  config, trained_dir, _ = trained
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="--config=") as error:
    evaluate.evaluate_checkpoint(None, str(empty), "valid")
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match=r"--checkpoint='last'.*best, latest"):
    evaluate.evaluate_checkpoint(config, str(trained_dir), "valid", checkpoint="last")
  with pytest.raises(ValueError, match=r"'dev' is not in .* it has: test, train, valid"):
    evaluate.evaluate_checkpoint(config, str(trained_dir), "dev")
  missing = tiny_config(str(tmp_path / "no_store"))
  with pytest.raises(ValueError, match=r"config.data_dir=.*samplecnn_jax.prepare.*"
                                       r"--config.data_dir=STORE") as error:
    evaluate.evaluate_checkpoint(missing, str(trained_dir), "valid")
  assert "\n" not in str(error.value)
  assert list(empty.iterdir()) == [] and not (trained_dir / "metrics_dev.json").exists()


def test_an_unset_data_dir_names_the_field_and_the_prepare_command(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No prepared/demo here.
  config = tiny_config("")
  with pytest.raises(ValueError, match=r"config.data_dir is not set.*prepared/demo.*"
                                       r"python -m samplecnn_jax.prepare"):
    evaluate.open_store(config)
