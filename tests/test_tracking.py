"""Tests for samplecnn_jax.tracking: the flattened config and metric records MLflow gets, an
offline MLflow run in WORKDIR/mlruns that a resumed run continues, an offline W&B run in
WORKDIR/wandb that a resumed run continues, training with --config.tracking=mlflow|wandb, and
no MLflow or W&B import unless a run asks for it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import tiny_config

from samplecnn_jax import config_base, tracking, train
from samplecnn_jax.testing import REPO, load_config


def mlflow_client(workdir):
  from mlflow import MlflowClient

  return MlflowClient(tracking_uri=(workdir / "mlruns").resolve().as_uri())


def history(client, run_id, key):
  return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def wandb_runs(workdir):
  """The offline W&B runs of a workdir: {run folder name: bytes of its records file}."""
  return {folder.name: b"".join(path.read_bytes() for path in folder.glob("run-*.wandb"))
          for folder in sorted((workdir / "wandb").glob("offline-run-*"))}


def test_flatten_gives_dotted_params_and_metric_values_split_the_intervals():
  config = load_config("test")
  params = tracking.flatten(config)
  assert params["model.base_width"] == str(config.model.base_width)
  assert params["tracking"] == "none" and params["augment.mixup_alpha"] == "0.0"
  values = {"accuracy": 0.6, "accuracy_ci95": [0.49, 0.71], "num_clips": 75,
            "confusion_matrix": [[1, 0], [0, 1]], "checkpoint": "best", "loss": float("nan")}
  assert tracking.metric_values(values) == {"accuracy": 0.6, "accuracy_ci95_low": 0.49,
                                            "accuracy_ci95_high": 0.71, "num_clips": 75.0}


def test_an_unknown_tracker_and_a_missing_mlflow_are_one_line_errors(monkeypatch):
  config = load_config("test")
  config.tracking = "comet"
  with pytest.raises(ValueError, match=r"config.tracking='comet' is not valid.*mlflow, wandb"):
    config_base.validate_config(config)
  config.tracking = "mlflow"
  monkeypatch.setitem(sys.modules, "mlflow", None)  # As if it were not installed.
  with pytest.raises(ValueError, match=r"needs MLflow.*pip install -e '.\[tracking\]'"):
    tracking.check_available(config)
  config.tracking = "wandb"
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(ValueError, match=r"needs wandb.*pip install -e '.\[tracking\]'"):
    tracking.check_available(config)
  config.tracking = "none"
  tracking.check_available(config)  # Nothing to import.


def test_mlflow_run_is_offline_in_the_workdir_and_a_restart_continues_it(tmp_path):
  config = load_config("test")
  config.tracking = "mlflow"
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "metrics_test.json").write_text("{}")
  first = tracking.start(config, tmp_path)
  first.log(1, {"loss": 0.9, "learning_rate": 0.1}, "train")
  first.close()
  config.num_train_steps = 12  # A resumed run with one changed param keeps the first value.
  again = tracking.start(config, tmp_path)
  assert again.run_id == first.run_id
  again.log(2, {"loss": 0.7}, "train")
  again.log(2, {"f_score": 0.5, "f_score_ci95": [0.4, 0.6]}, "test")
  again.close()
  client = mlflow_client(tmp_path)
  assert len(client.search_runs([client.get_experiment_by_name("samplecnn_jax")
                                 .experiment_id])) == 1
  run = client.get_run(first.run_id)
  assert run.info.status == "FINISHED"
  assert run.data.params["model.base_width"] == str(config.model.base_width)
  assert run.data.params["num_train_steps"] == str(load_config("test").num_train_steps)
  assert history(client, first.run_id, "train/loss") == [(1, 0.9), (2, 0.7)]
  assert history(client, first.run_id, "test/f_score_ci95_high") == [(2, 0.6)]
  assert {a.path for a in client.list_artifacts(first.run_id)} == {"config.json",
                                                                    "metrics_test.json"}


def test_wandb_run_is_offline_in_the_workdir_and_a_restart_continues_it(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  config = load_config("test")
  config.tracking = "wandb"
  first = tracking.start(config, tmp_path)
  first.log(1, {"loss": 0.9, "learning_rate": 0.1}, "train")
  first.log(2, {"f_score": 0.5, "f_score_ci95": [0.4, 0.6], "num_clips": 12}, "test")
  first.close()
  run_id = (tmp_path / tracking.WANDB_RUN_ID_FILE).read_text().strip()
  assert run_id == first.run_id
  again = tracking.start(config, tmp_path)
  assert again.run_id == run_id
  again.log(3, {"loss": 0.7}, "train")
  again.close()
  runs = wandb_runs(tmp_path)
  assert len(runs) == 2 and all(f"-{run_id}" in name for name in runs), runs.keys()
  first_records, again_records = (runs[name] for name in sorted(runs))
  for key in (b"train/loss", b"train/learning_rate", b"test/f_score", b"test/f_score_ci95_low",
              b"test/f_score_ci95_high", b"model.base_width"):
    assert key in first_records, key
  assert b"train/loss" in again_records and b"test/f_score" not in again_records


@pytest.mark.slow
def test_training_with_mlflow_tracks_params_metrics_and_artefacts(demo_store, tmp_path):
  config = tiny_config(demo_store, tracking="mlflow")
  train.train_and_evaluate(config, str(tmp_path))
  run_id = (tmp_path / "mlruns" / tracking.RUN_ID_FILE).read_text().strip()
  client = mlflow_client(tmp_path)
  run = client.get_run(run_id)
  assert run.info.status == "FINISHED" and run.data.params["tracking"] == "mlflow"
  for key in ("train/loss", "valid/f_score", "test/f_score", "test/f_score_ci95_low"):
    assert key in run.data.metrics, key
  steps = [step for step, _ in history(client, run_id, "valid/loss")]
  assert steps == sorted(steps) and len(steps) >= 2
  artefacts = {a.path for a in client.list_artifacts(run_id)}
  assert {"config.json", "labels.json", "metrics_test.json", "predictions_test.npz"} <= artefacts
  # A longer run in the same workdir resumes from its checkpoints and continues the run.
  longer = tiny_config(demo_store, tracking="mlflow", num_train_steps=config.num_train_steps + 2)
  train.train_and_evaluate(longer, str(tmp_path))
  assert (tmp_path / "mlruns" / tracking.RUN_ID_FILE).read_text().strip() == run_id
  last = max(step for step, _ in history(client, run_id, "train/loss"))
  assert last == longer.num_train_steps


@pytest.mark.slow
def test_training_with_wandb_logs_its_scalars_offline_and_a_longer_run_continues_it(
    demo_store, tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  config = tiny_config(demo_store, tracking="wandb")
  train.train_and_evaluate(config, str(tmp_path))
  run_id = (tmp_path / tracking.WANDB_RUN_ID_FILE).read_text().strip()
  (records,) = wandb_runs(tmp_path).values()
  for key in (b"train/loss", b"valid/f_score", b"test/f_score", b"test/f_score_ci95_low",
              b'"wandb"'):
    assert key in records, key
  longer = tiny_config(demo_store, tracking="wandb", num_train_steps=config.num_train_steps + 2)
  train.train_and_evaluate(longer, str(tmp_path))
  runs = wandb_runs(tmp_path)
  assert len(runs) == 2 and all(f"-{run_id}" in name for name in runs), runs.keys()


@pytest.mark.slow
def test_mlflow_and_wandb_are_imported_only_when_a_run_asks_for_it():
  code = ("import sys; from samplecnn_jax import tracking, train, main, compare; "
          "from samplecnn_jax.testing import load_config; "
          "tracking.check_available(load_config('test')); "
          "tracking.start(load_config('test'), '.'); "
          "assert 'mlflow' not in sys.modules, 'mlflow imported'; "
          "assert 'wandb' not in sys.modules, 'wandb imported'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
