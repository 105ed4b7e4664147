"""Experiment tracking of a training run in MLflow or W&B: `--config.tracking=none|mlflow|wandb`.

With `config.tracking="mlflow"`, a run is recorded in a local MLflow file store under its
workdir, `WORKDIR/mlruns` (no server, no network: `mlflow ui --backend-store-uri
WORKDIR/mlruns` shows it), experiment `samplecnn_jax`:

- params: the flattened config (`model.base_width`, `augment.mixup_alpha`, ...);
- metrics, by step: every scalar training writes to TensorBoard (`train/loss`,
  `valid/f_score`, `test/f_score`, ...) and, for the test split, each interval as
  `test/<key>_ci95_low` and `test/<key>_ci95_high`;
- artefacts, when training ends: `config.json`, `labels.json`, `metrics_<split>.json` and
  `predictions_<split>.npz` of the workdir.

A resumed run continues the same MLflow run: its id is kept in `WORKDIR/mlruns/run_id`.

MLflow is an optional extra (`pip install -e '.[tracking]'`: mlflow-skinny) and is imported
only when a run asks for it. MLflow 3 keeps its file store in maintenance mode and refuses it
unless `MLFLOW_ALLOW_FILE_STORE=true`; a run that chose the file store under its own workdir
sets that variable for its process. Only process 0 of a job tracks.

With `config.tracking="wandb"`, a run is recorded in Weights & Biases, its files under the
workdir (`WORKDIR/wandb/`; `WANDB_MODE=offline` keeps it there, `wandb sync` uploads it later),
project `samplecnn_jax`: config = the flattened config; history = the scalars training writes
to TensorBoard, by step, as MLflow gets them; summary = the test metrics and their intervals.
A resumed run continues the same W&B run (`resume="allow"`): its id is kept in
`WORKDIR/wandb_run_id`.
W&B is an optional extra too (`pip install -e '.[tracking]'`), imported only when chosen.

What is not here: TensorBoard (`train.Progress`, which calls this module), the files of the
workdir themselves (`workdir_files.py`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import ml_collections

TRACKERS = ("none", "mlflow", "wandb")  # The values of config.tracking.
EXPERIMENT = "samplecnn_jax"  # The MLflow experiment every run is filed under.
RUN_ID_FILE = "run_id"  # In WORKDIR/mlruns: the MLflow run a resumed run continues.
WANDB_RUN_ID_FILE = "wandb_run_id"  # In WORKDIR: the W&B run a resumed run continues.
INSTALL = "pip install -e '.[tracking]'"
ARTIFACT_PATTERNS = ("config.json", "labels.json", "metrics_*.json", "predictions_*.npz")
_BATCH = 100  # Params or metrics per MLflow call (its limit for params is 100).


def check_available(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError in one line when the chosen tracker's package is not installed.

  Training calls this before anything is written; it imports nothing when tracking is off.
  """
  if config.tracking == "mlflow":
    _mlflow_client_class()
  elif config.tracking == "wandb":
    _wandb_module()


def _mlflow_client_class():
  try:
    from mlflow import MlflowClient
  except ImportError:
    raise ValueError(f"config.tracking='mlflow' needs MLflow, which is not installed: "
                     f"{INSTALL} (or --config.tracking=none).") from None
  return MlflowClient


def _wandb_module():
  try:
    import wandb
  except ImportError:
    raise ValueError(f"config.tracking='wandb' needs wandb, which is not installed: "
                     f"{INSTALL} (or --config.tracking=none).") from None
  return wandb


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "",
            as_text: bool = True) -> dict[str, Any]:
  """The config with dotted names (`model.base_width`): values as text for MLflow params,
  or as they are (`as_text=False`) for the W&B config, which keeps numbers as numbers."""
  params = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      params.update(flatten(value, f"{prefix}{key}.", as_text))
    else:
      params[f"{prefix}{key}"] = str(value) if as_text else value
  return params


def metric_values(values: dict[str, Any]) -> dict[str, float]:
  """The numbers of a metrics record as MLflow metrics: finite numbers as they are, each
  `<key>_ci95: [low, high]` as `<key>_ci95_low` and `<key>_ci95_high`; the rest (confusion
  matrices, thresholds, text) left out."""
  result = {}
  for key, value in values.items():
    if isinstance(value, bool):
      continue
    if isinstance(value, int | float):
      result[key] = float(value)
    elif key.endswith("_ci95") and isinstance(value, list | tuple) and len(value) == 2:
      result[f"{key}_low"], result[f"{key}_high"] = float(value[0]), float(value[1])
  return {key: value for key, value in result.items() if math.isfinite(value)}


class Tracker:
  """No tracking (`config.tracking="none"`): every call does nothing."""

  def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
    """Records `values` (a metrics record) under `prefix/` at `step`."""

  def close(self) -> None:
    """Uploads the workdir's artefacts and ends the run."""


class MlflowTracker(Tracker):
  """A run in the MLflow file store `WORKDIR/mlruns`, through an `MlflowClient` (no global
  active run, so several runs can be tracked in one process, as in tests and notebooks)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    store = self.workdir / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # The file store is what was asked for.
    self.client = _mlflow_client_class()(tracking_uri=store.resolve().as_uri())
    id_file = store / RUN_ID_FILE
    self.run_id = self._resumed_run(id_file)
    if self.run_id is None:
      experiment = self.client.get_experiment_by_name(EXPERIMENT)
      experiment_id = (experiment.experiment_id if experiment is not None
                       else self.client.create_experiment(EXPERIMENT))
      self.run_id = self.client.create_run(experiment_id, run_name=self.workdir.name).info.run_id
      id_file.write_text(self.run_id + "\n")
    self._log_params(flatten(config))

  def _resumed_run(self, id_file: Path) -> str | None:
    if not id_file.is_file():
      return None
    run_id = id_file.read_text().strip()
    try:
      self.client.update_run(run_id, status="RUNNING")
    except Exception as error:  # noqa: BLE001 -- any MLflow error: the run is gone.
      logging.warning("MLflow run %s of %s cannot be continued (%s); starting a new one.",
                      run_id, self.workdir, str(error).splitlines()[0])
      return None
    logging.info("Continuing MLflow run %s in %s", run_id, id_file.parent)
    return run_id

  def _log_params(self, params: dict[str, str]) -> None:
    """Logs the params the run does not have yet (MLflow params never change: a resumed run
    with another value keeps the first and says so)."""
    from mlflow.entities import Param

    existing = self.client.get_run(self.run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if changed:
      logging.warning("MLflow run %s keeps its first values of %s (params cannot change).",
                      self.run_id, ", ".join(changed))
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), _BATCH):
      self.client.log_batch(self.run_id, params=new[start:start + _BATCH])

  def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(f"{prefix}/{key}", value, now, int(step))
             for key, value in metric_values(values).items()]
    for start in range(0, len(batch), _BATCH):
      self.client.log_batch(self.run_id, metrics=batch[start:start + _BATCH])

  def close(self) -> None:
    for pattern in ARTIFACT_PATTERNS:
      for path in sorted(self.workdir.glob(pattern)):
        self.client.log_artifact(self.run_id, str(path))
    self.client.set_terminated(self.run_id)


class WandbTracker(Tracker):
  """A W&B run with its files in `WORKDIR/wandb`, logged to through `run.log` with training's
  own step, like MLflow; the test metrics and their intervals also go to the run's summary.

  Not W&B's TensorBoard sync of `WORKDIR/tensorboard` (`sync_tensorboard=True`): offline
  (wandb 0.31) it missed the last scalars of our tensorboardX writer, always while the writer
  was open and now and then after it was closed; its patch of the writer classes also needs
  the full `tensorboard` package."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
    wandb = _wandb_module()
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    id_file = self.workdir / WANDB_RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    self.run = wandb.init(project=EXPERIMENT, name=self.workdir.name, dir=str(self.workdir),
                          id=run_id, resume="allow", config=flatten(config, as_text=False))
    if run_id is None:
      id_file.write_text(self.run.id + "\n")
    else:
      logging.info("Continuing W&B run %s in %s", run_id, self.workdir / "wandb")

  @property
  def run_id(self) -> str:
    return self.run.id

  def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
    named = {f"{prefix}/{key}": value for key, value in metric_values(values).items()}
    self.run.log(named, step=int(step))
    if prefix == "test":
      self.run.summary.update(named)

  def close(self) -> None:
    """Ends the run and stops W&B's service process: `finish` alone can return before the
    service has written the run's records file (`run-<id>.wandb`), which a `wandb sync` or a
    test reading it right after training would then find incomplete (wandb 0.31)."""
    self.run.finish()
    _wandb_module().teardown()


def start(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Tracker:
  """The tracker `config.tracking` asks for, its run started (or continued) for `workdir`."""
  if config.tracking == "mlflow":
    return MlflowTracker(config, workdir)
  if config.tracking == "wandb":
    return WandbTracker(config, workdir)
  if config.tracking != "none":
    raise ValueError(f"config.tracking={config.tracking!r} is not valid; choose one of: "
                     f"{', '.join(TRACKERS)} (--config.tracking=...).")
  return Tracker()
