"""Tests for samplecnn_jax/workdir_files.py: the config, labels and metrics files of a workdir."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import REPO, load_config

from samplecnn_jax import store, workdir_files


def test_config_round_trips_and_fills_fields_added_since(tmp_path):
  config = load_config("test")
  config.learning_rate = 0.5
  workdir_files.write_config(tmp_path, config)
  saved = json.loads((tmp_path / workdir_files.CONFIG_FILE).read_text())
  assert workdir_files.saved_config(tmp_path) == saved and saved["learning_rate"] == 0.5
  del saved["tune_thresholds"]  # A workdir written before the field existed.
  (tmp_path / workdir_files.CONFIG_FILE).write_text(json.dumps(saved))
  again = workdir_files.read_config(tmp_path)
  assert again.learning_rate == 0.5 and again.model.base_width == config.model.base_width
  assert again.tune_thresholds is False
  assert not list(tmp_path.glob("*.tmp*"))


def test_read_config_from_a_file_or_explains_what_is_missing(tmp_path):
  assert workdir_files.read_config(tmp_path, f"{REPO / 'configs' / 'test.py'}").num_classes == 6
  assert workdir_files.saved_config(tmp_path) is None
  with pytest.raises(FileNotFoundError, match="has no config.json: is it a training workdir"):
    workdir_files.read_config(tmp_path)
  with pytest.raises(FileNotFoundError, match="Config file nope.py does not exist"):
    workdir_files.read_config(tmp_path, "nope.py")


def test_labels_come_from_the_workdir_then_the_store(tmp_path):
  data_dir = tmp_path / "store"
  store.Manifest(16000, "multi_class", ("a",), {}).write(data_dir)
  labels = workdir_files.read_labels(tmp_path, data_dir)
  assert labels.vocabulary == ("a",) and labels.source.endswith(store.MANIFEST)
  workdir_files.write_labels(tmp_path, workdir_files.LabelInfo(("b",), "multi_label"))
  labels = workdir_files.read_labels(tmp_path, data_dir)
  assert labels.vocabulary == ("b",) and labels.source.endswith(workdir_files.LABELS_FILE)
  assert workdir_files.read_labels(tmp_path / "empty") is None
  with pytest.raises(FileNotFoundError, match="--labels .*gone.json does not exist"):
    workdir_files.read_labels(tmp_path, data_dir, tmp_path / "gone.json")


def test_label_info_round_trips_through_labels_json_and_checks_the_eval_map(tmp_path):
  speech = workdir_files.LabelInfo(("yes", "no", "wow"), "multi_class", ("yes", "no", "_unknown_"),
                             (0, 1, 2))
  workdir_files.write_labels(tmp_path, speech)
  saved = json.loads((tmp_path / workdir_files.LABELS_FILE).read_text())
  assert saved == {"vocabulary": ["yes", "no", "wow"], "label_type": "multi_class",
                   "eval_vocabulary": ["yes", "no", "_unknown_"], "eval_label_map": [0, 1, 2]}
  assert workdir_files.read_labels(tmp_path) == dataclasses.replace(
      speech, source=str(tmp_path / workdir_files.LABELS_FILE))
  assert set(workdir_files.LabelInfo(("a",), "multi_label").to_json()) == {"vocabulary", "label_type"}
  with pytest.raises(ValueError, match="eval_label_map must give"):
    workdir_files.LabelInfo.from_json({**saved, "eval_label_map": [0, 1, 5]})
  with pytest.raises(ValueError, match="go together"):
    workdir_files.LabelInfo.from_json({"vocabulary": ["a"], "eval_vocabulary": ["a"]})
  with pytest.raises(ValueError, match="no 'vocabulary' list"):
    workdir_files.LabelInfo.from_json({"label_type": "multi_label"})
  assert workdir_files.LabelInfo.numbered(3, "multi_label").vocabulary == ("class_0", "class_1",
                                                                      "class_2")


def test_metrics_are_written_with_split_and_step(tmp_path):
  path = workdir_files.write_metrics(tmp_path, "valid", 7, {"loss": 0.25})
  assert path == workdir_files.metrics_path(tmp_path, "valid") == tmp_path / "metrics_valid.json"
  assert workdir_files.read_metrics(tmp_path, "valid") == {"split": "valid", "step": 7, "loss": 0.25}


def test_one_holder_at_a_time_and_the_lock_is_released_on_exit(tmp_path):
  with pytest.raises(workdir_files.WorkdirLockedError, match="in use"):
    with workdir_files.exclusive(tmp_path), workdir_files.exclusive(tmp_path):
      pass
  with workdir_files.exclusive(tmp_path):  # Released on exit: it can be taken again.
    pass
