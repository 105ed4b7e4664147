"""Tests for samplecnn_jax.compare: entries from workdirs, baseline folders and seed groups, the
paired intervals and verdicts, the refusal of entries on other clips, and the command."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import tiny_config

from samplecnn_jax import baseline, compare, store, train, workdir_files
from samplecnn_jax.workdir_files import Predictions


def classes_and_scores(rng, clips: int, right: float, num_classes: int = 4):
  """Class labels and one-hot scores that are right for a fraction `right` of the clips."""
  classes = rng.integers(0, num_classes, clips)
  hit = rng.random(clips) < right
  predicted = np.where(hit, classes, (classes + 1) % num_classes)
  return classes, np.eye(num_classes)[predicted] * 0.8 + 0.05


def write_run(folder, classes, scores, clip_ids=None, split="test"):
  """A workdir-like folder holding only what compare reads: predictions_<split>.npz."""
  ids = clip_ids if clip_ids is not None else [f"clip{i:04d}" for i in range(len(classes))]
  Predictions.of(ids, classes, scores, label_type="multi_class", metric="accuracy").save(
      workdir_files.predictions_path(folder, split))
  return str(folder)


def run_cli(*args: str) -> int:
  return compare.main(["compare", *args])


def test_a_run_compared_with_itself_differs_by_exactly_zero(tmp_path):
  classes, scores = classes_and_scores(np.random.default_rng(0), 100, 0.6)
  run = write_run(tmp_path / "a", classes, scores)
  result = compare.compare(compare.load_entries(run) + compare.load_entries(run))
  first, again = result.rows
  assert again.value == first.value and again.ci95 == first.ci95
  assert again.difference == 0.0 and again.difference_ci95 == (0.0, 0.0)
  assert again.verdict.startswith("no clear difference")


def test_intervals_contain_the_estimate_and_shrink_with_more_clips(tmp_path):
  rng = np.random.default_rng(1)
  widths = []
  for clips in (60, 960):
    a = write_run(tmp_path / f"a{clips}", *classes_and_scores(rng, clips, 0.6))
    classes = np.load(workdir_files.predictions_path(a, "test"))["labels"]
    b_scores = np.where(rng.random(clips) < 0.5, classes, (classes + 2) % 4)
    b = write_run(tmp_path / f"b{clips}", classes, np.eye(4)[b_scores])
    rows = compare.compare(compare.load_entries(a) + compare.load_entries(b)).rows
    for row in rows:
      assert row.ci95[0] <= row.value <= row.ci95[1]
    assert rows[1].difference_ci95[0] <= rows[1].difference <= rows[1].difference_ci95[1]
    widths.append(rows[1].difference_ci95[1] - rows[1].difference_ci95[0])
  assert widths[1] < widths[0] / 2.5  # 16x the clips: about a quarter of the width.


def test_a_clearly_better_run_gets_a_verdict_in_points(tmp_path):
  rng = np.random.default_rng(2)
  classes, weak = classes_and_scores(rng, 400, 0.5)
  strong = np.eye(4)[np.where(rng.random(400) < 0.9, classes, (classes + 1) % 4)]
  a, b = write_run(tmp_path / "a", classes, weak), write_run(tmp_path / "b", classes, strong)
  row = compare.compare(compare.load_entries(a) + compare.load_entries(b)).rows[1]
  low, high = row.difference_ci95
  assert 0 < low < row.difference < high
  assert row.verdict == (f"{b} is better by {100 * row.difference:.1f} points, 95% CI "
                         f"{100 * low:.1f}-{100 * high:.1f}")
  reverse = compare.compare(compare.load_entries(b) + compare.load_entries(a)).rows[1]
  assert reverse.verdict.startswith(f"{a} is worse by {100 * row.difference:.1f} points")


def test_seeds_pool_as_the_mean_of_their_metrics_on_the_same_resamples(tmp_path):
  rng = np.random.default_rng(3)
  classes, first = classes_and_scores(rng, 200, 0.5)
  seeds = [write_run(tmp_path / "s0", classes, first)]
  for i in (1, 2):  # Other seeds: right on another 60% of the same clips.
    scores = np.eye(4)[np.where(rng.random(200) < 0.6, classes, (classes + 3) % 4)]
    seeds.append(write_run(tmp_path / f"s{i}", classes, scores))
  entries = compare.load_entries(seeds[0]) + compare.load_entries(",".join(seeds))
  result = compare.compare(entries)
  group = result.rows[1]
  assert group.name == f"{','.join(seeds)} (3 seeds)" and len(group.seed_values) == 3
  assert group.value == pytest.approx(np.mean(group.seed_values))
  assert group.seed_values[0] == result.rows[0].value
  assert group.ci95[0] <= group.value <= group.ci95[1]


def test_compare_refuses_entries_on_other_clips_or_labels(tmp_path, capsys):
  rng = np.random.default_rng(4)
  classes, scores = classes_and_scores(rng, 50, 0.6)
  a = write_run(tmp_path / "a", classes, scores)
  other_clips = write_run(tmp_path / "other", classes, scores,
                          clip_ids=[f"other{i}" for i in range(50)])
  fewer = write_run(tmp_path / "fewer", classes[:40], scores[:40])
  relabelled = write_run(tmp_path / "relabelled", (classes + 1) % 4, scores)
  for folder, message in ((other_clips, r"other scores 50 clips, .*a 50; 50 clips of .*other "
                                        r"are not in .*a \(e.g. 'other0'\)"),
                          (fewer, r"fewer scores 40 clips, .*a 50; 10 clips of .*a are not in "
                                  r".*fewer \(e.g. 'clip0040'\)"),
                          (relabelled, r"label clip 'clip0000' differently \(50 clips differ")):
    assert run_cli(a, folder) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and re.search(message, error), error
    assert "same" in error or "versions of the store" in error


def test_clips_in_another_order_are_aligned(tmp_path):
  classes, scores = classes_and_scores(np.random.default_rng(5), 30, 0.6)
  ids = [f"clip{i:04d}" for i in range(30)]
  a = write_run(tmp_path / "a", classes, scores)
  order = np.random.default_rng(6).permutation(30)
  b = write_run(tmp_path / "b", classes[order], scores[order], clip_ids=[ids[i] for i in order])
  row = compare.compare(compare.load_entries(a) + compare.load_entries(b)).rows[1]
  assert row.difference == 0.0 and row.difference_ci95 == (0.0, 0.0)


def test_a_baseline_folder_gives_one_entry_per_model(tmp_path):
  rng = np.random.default_rng(7)
  classes, scores = classes_and_scores(rng, 40, 0.6)
  folder = tmp_path / "baselines"
  ids = [f"clip{i:04d}" for i in range(40)]
  names = ["mfcc+lr", "logmel+mlp"]
  store.write_json(folder / "baseline_test.json", {name: {} for name in names})
  for name in names:
    Predictions.of(ids, classes, classes_and_scores(rng, 40, 0.5)[1], label_type="multi_class",
                   metric="accuracy").save(workdir_files.predictions_path(folder, "test", name))
  run = write_run(tmp_path / "run", classes, scores)
  entries = compare.load_entries(run) + compare.load_entries(str(folder))
  assert [e.name for e in entries] == [run, f"{folder}:mfcc+lr", f"{folder}:logmel+mlp"]
  assert len(compare.compare(entries).rows) == 3
  one = compare.load_entries(f"{folder}:logmel+mlp")
  assert [e.name for e in one] == [f"{folder}:logmel+mlp"]
  np.testing.assert_array_equal(one[0].seeds[0].scores, entries[2].seeds[0].scores)
  with pytest.raises(FileNotFoundError, match=r"no baseline model 'svm' .*mfcc\+lr, logmel"):
    compare.load_entries(f"{folder}:svm")


def test_command_prints_the_table_and_verdicts_and_writes_json(tmp_path, capsys):
  rng = np.random.default_rng(8)
  classes, scores = classes_and_scores(rng, 80, 0.6)
  a = write_run(tmp_path / "a", classes, scores)
  b = write_run(tmp_path / "b", classes, classes_and_scores(rng, 80, 0.7)[1])
  output = tmp_path / "comparison.json"
  assert run_cli(a, b, f"--output={output}") == 0
  out = capsys.readouterr().out
  assert "test accuracy on 80 clips" in out and f"vs {a}: " in out
  saved = json.loads(output.read_text())
  assert saved["metric"] == "accuracy" and saved["num_clips"] == 80
  assert [row["name"] for row in saved["rows"]] == [a, b]
  assert saved["rows"][1]["verdict"] in out


@pytest.mark.parametrize("args, message", [
    ([], "give at least two workdirs"),
    (["{a}"], "at least two entries"),
    (["{a}", "{missing}"], "is not a folder"),
    (["{a}", "{empty}"], "no predictions_test.npz and no baseline_test.json"),
    (["{a}", "{a}", "--resamples=100"], "at least 1000"),
    (["{a}", "{a}", "--metric=f_score"], None),
    (["{a}", "{a}", "--metric=loss"], "--metric"),
])
def test_command_errors_are_one_line(tmp_path, capsys, args, message):
  classes, scores = classes_and_scores(np.random.default_rng(9), 20, 0.5)
  a = write_run(tmp_path / "a", classes, scores)
  (tmp_path / "empty").mkdir()
  args = [x.format(a=a, missing=tmp_path / "missing", empty=tmp_path / "empty") for x in args]
  code = run_cli(*args)
  error = capsys.readouterr().err
  if message is None:  # The F-score of class indices scores them as one-hot rows.
    assert code == 0, error
    return
  assert code == 2 and len(error.strip().splitlines()) == 1 and message in error, error


def test_a_workdir_without_predictions_is_told_how_to_rescore_it(tmp_path):
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / workdir_files.CONFIG_FILE).write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"--mode=eval --split=test"):
    compare.load_entries(str(tmp_path / "old"))


@pytest.mark.slow
def test_a_trained_run_against_the_baselines_of_its_store(demo_store, tmp_path, capsys):
  """End to end on the demo store: training's and baseline's predictions compare."""
  run = tmp_path / "run"
  train.train_and_evaluate(tiny_config(demo_store, num_train_steps=3), str(run))
  baselines = tmp_path / "baselines"
  result = baseline.run_baselines(demo_store, features=["logmel"], models=["lr"],
                                  eval_splits=["test"])
  baseline.write_results(result, baselines)
  assert run_cli(str(run), str(baselines), "--metric=roc_auc") == 0
  out = capsys.readouterr().out
  assert "test roc_auc on 12 clips" in out and f"vs {run}: " in out and "logmel+lr" in out
