"""Tests for samplecnn_jax/workdir.py: the config, labels and metrics files of a workdir."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, load_config

from samplecnn_jax import store, workdir


def test_config_round_trips_and_fills_fields_added_since(tmp_path):
  config = load_config("test")
  config.learning_rate = 0.5
  workdir.write_config(tmp_path, config)
  saved = json.loads((tmp_path / workdir.CONFIG_FILE).read_text())
  assert workdir.saved_config(tmp_path) == saved and saved["learning_rate"] == 0.5
  del saved["tune_thresholds"]  # A workdir written before the field existed.
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(saved))
  again = workdir.read_config(tmp_path)
  assert again.learning_rate == 0.5 and again.model.base_width == config.model.base_width
  assert again.tune_thresholds is False
  assert not list(tmp_path.glob("*.tmp*"))


def test_read_config_from_a_file_or_explains_what_is_missing(tmp_path):
  assert workdir.read_config(tmp_path, f"{REPO / 'configs' / 'test.py'}").num_classes == 6
  assert workdir.saved_config(tmp_path) is None
  with pytest.raises(FileNotFoundError, match="has no config.json: is it a training workdir"):
    workdir.read_config(tmp_path)
  with pytest.raises(FileNotFoundError, match="Config file nope.py does not exist"):
    workdir.read_config(tmp_path, "nope.py")


def test_labels_come_from_the_workdir_then_the_store(tmp_path):
  data_dir = tmp_path / "store"
  store.Manifest(16000, "multi_class", ("a",), {}).write(data_dir)
  record, source = workdir.read_labels(tmp_path, data_dir)
  assert record["vocabulary"] == ["a"] and source.endswith(store.MANIFEST)
  workdir.write_labels(tmp_path, {"vocabulary": ["b"], "label_type": "multi_label"})
  record, source = workdir.read_labels(tmp_path, data_dir)
  assert record["vocabulary"] == ["b"] and source.endswith(workdir.LABELS_FILE)
  assert workdir.read_labels(tmp_path / "empty") is None
  with pytest.raises(FileNotFoundError, match="--labels .*gone.json does not exist"):
    workdir.read_labels(tmp_path, data_dir, tmp_path / "gone.json")


def test_metrics_are_written_with_split_and_step(tmp_path):
  path = workdir.write_metrics(tmp_path, "valid", 7, {"loss": 0.25})
  assert path == workdir.metrics_path(tmp_path, "valid") == tmp_path / "metrics_valid.json"
  assert workdir.read_metrics(tmp_path, "valid") == {"split": "valid", "step": 7, "loss": 0.25}
