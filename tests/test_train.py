"""Tests for samplecnn_jax.train: smoke run, exact resume, staged schedule, NaN guard,
config mismatch, config and store checks, and 1-device vs 4-device equivalence.

End-to-end training runs and subprocesses are marked `slow`; the evaluator and the eval-only
mode are tested in test_evaluate.py."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, load_config, tiny_config

from samplecnn_jax import checkpointing, evaluate, prepare, store, train


def final_params(workdir: str | Path, config) -> dict:
  return checkpointing.load_variables(workdir, config, which="latest")


def assert_trees_equal(a, b, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def latest_meta(workdir: str | Path) -> tuple[int, dict]:
  """The step and bookkeeping record (stage history, best value) of the latest checkpoint."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options) as manager:
    step = manager.latest_step()
    return step, manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"]


@pytest.mark.slow
def test_train_and_evaluate_writes_metrics_checkpoints_and_tensorboard(demo_store, tmp_path):
  config = tiny_config(demo_store)
  result = train.train_and_evaluate(config, str(tmp_path))
  for key in ("f_score", "precision", "recall", "loss", "num_clips"):
    assert key in result
  assert result["num_clips"] == 12
  valid = json.loads((tmp_path / "metrics_valid.json").read_text())
  test = json.loads((tmp_path / "metrics_test.json").read_text())
  assert valid["step"] == config.num_train_steps and valid["split"] == "valid"
  assert test["step"] == 6, "the test split is scored with the best checkpoint (step 6)"
  assert np.isfinite(valid["loss"]) and 0.0 <= test["f_score"] <= 1.0
  events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.*"))
  for tag in (b"train/loss", b"train/examples_per_sec", b"valid/f_score", b"test/f_score"):
    assert tag in events, tag
  assert (tmp_path / "config.json").exists()
  labels = json.loads((tmp_path / "labels.json").read_text())
  assert labels["label_type"] == "multi_label" and len(labels["vocabulary"]) == config.num_classes
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [3, 6]


@pytest.mark.slow
def test_same_seed_same_run_and_resume_is_a_no_op(demo_store, tmp_path):
  config = tiny_config(demo_store)
  train.train_and_evaluate(config, str(tmp_path / "a"))
  train.train_and_evaluate(config, str(tmp_path / "b"))
  assert_trees_equal(final_params(tmp_path / "a", config), final_params(tmp_path / "b", config))
  # Running again on a finished workdir resumes at the end and trains no further.
  before = final_params(tmp_path / "a", config)
  train.train_and_evaluate(config, str(tmp_path / "a"))
  assert_trees_equal(before, final_params(tmp_path / "a", config))


# `main` whose checkpoint save of step >= argv[1] waits for the write, then hangs until killed:
# the kill lands between two checkpoints whatever the machine's speed.
HANG_AFTER_CHECKPOINT = """
import runpy, sys, time
from samplecnn_jax import checkpointing
hang_at, save = int(sys.argv.pop(1)), checkpointing.Checkpointer.save
def save_then_hang(self, state, *args):
  save(self, state, *args)
  if int(state.step) >= hang_at:
    self.wait()
    time.sleep(3600)
checkpointing.Checkpointer.save = save_then_hang
runpy.run_module("samplecnn_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(demo_store, tmp_path):
  """SIGKILL a real `main` process after its step-6 checkpoint, then resume in-process."""
  steps = 12
  config = tiny_config(demo_store, num_train_steps=steps, steps_per_eval=4,
                       checkpoint_every_steps=2)
  train.train_and_evaluate(config, str(tmp_path / "uninterrupted"))

  killed = tmp_path / "killed"
  cmd = [sys.executable, "-c", HANG_AFTER_CHECKPOINT, "6",
         f"--config={REPO / 'configs' / 'test.py'}",
         f"--workdir={killed}", f"--config.data_dir={demo_store}",
         f"--config.num_train_steps={steps}", "--config.steps_per_eval=4",
         "--config.checkpoint_every_steps=2"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if (killed / "checkpoints" / "6").is_dir():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / "checkpoints" / "6").is_dir(), proc.stderr.read().decode()[-2000:]
  assert 0 < checkpointing.checkpoint_step(killed, "latest") < steps, "killed mid-run"

  train.train_and_evaluate(config, str(killed))
  assert_trees_equal(final_params(tmp_path / "uninterrupted", config), final_params(killed, config))
  a = json.loads((tmp_path / "uninterrupted" / "metrics_test.json").read_text())
  b = json.loads((killed / "metrics_test.json").read_text())
  assert a == b


@pytest.mark.slow
def test_staged_schedule_reloads_best_and_lowers_learning_rate(demo_store, tmp_path):
  # lr 1e-30 (updates vanish in float32; 0 is refused) means validation loss never improves
  # after the first evaluation: every `patience` evaluations a stage ends, until the last
  # stage ends the run early.
  config = tiny_config(demo_store, learning_rate=1e-30, steps_per_eval=1, patience=1,
                       num_stages=3, num_train_steps=50, checkpoint_every_steps=50)
  train.train_and_evaluate(config, str(tmp_path))
  step, meta = latest_meta(tmp_path)
  assert meta["done"] is True
  assert [s["stage"] for s in meta["stage_history"]] == [0, 1, 2]
  # Evaluation 1 sets the best; evaluations 2, 3, 4 each end a stage without improving.
  assert step == 4 and [s["end_step"] for s in meta["stage_history"]] == [2, 3, 4]


def test_learning_rate_follows_keras_decay_and_stages():
  config = load_config("test")
  lr = lambda stage, stage_step: float(train.learning_rate(
      config, np.int32(0), np.int32(stage), np.int32(stage_step)))
  assert lr(0, 0) == pytest.approx(0.01)
  assert lr(0, 1_000_000) == pytest.approx(0.01 / 2)
  assert lr(2, 0) == pytest.approx(0.01 * 0.2 ** 2)


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_schedule_has_the_warmup_cosine_shape_and_no_optax_note(warmup, caplog):
  config = load_config("test")
  config.schedule, config.warmup_steps, config.num_train_steps = "cosine", warmup, 100
  with caplog.at_level(logging.INFO):
    lrs = [float(train.learning_rate(config, np.int32(t), np.int32(0), np.int32(t)))
           for t in range(0, 101, 5)]
  assert "polynomial schedule" not in caplog.text
  expected = [0.01 * t / warmup if t < warmup else
              0.005 * (1 + math.cos(math.pi * (t - warmup) / (100 - warmup)))
              for t in range(0, 101, 5)]
  np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(demo_store, tmp_path):
  config = tiny_config(demo_store, learning_rate=1e30, num_train_steps=30, steps_per_eval=30,
                       checkpoint_every_steps=1, log_every_steps=1, optimizer="sgd",
                       nesterov=False)
  with pytest.raises(FloatingPointError, match="last finite checkpoint"):
    train.train_and_evaluate(config, str(tmp_path))
  latest = checkpointing.load_variables(tmp_path, config, which="latest")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(latest["params"]))


@pytest.mark.slow
def test_divergence_between_log_steps_never_saves_a_non_finite_state(demo_store, tmp_path):
  """Checkpoints every 2 steps, logs every 50: the guard at the save catches what the log
  would see too late; every kept checkpoint is finite and a sane rerun resumes from it.

  lr 100 diverges after several saves (at step 22 of 40 here), late enough that the last
  finite checkpoint still scores finite numbers; lr 1e30 diverged before the first save.
  """
  config = tiny_config(demo_store, learning_rate=100.0, num_train_steps=40, steps_per_eval=40,
                       checkpoint_every_steps=2, log_every_steps=50, optimizer="sgd",
                       nesterov=False)
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert "Parameters or batch statistics became NaN/Inf" in message
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps, "this config diverges after the first save"
  assert f"last finite checkpoint (step {steps[-1]})" in message
  variables = checkpointing.load_variables(tmp_path, config, which="latest")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
  sane = tiny_config(demo_store, num_train_steps=4, steps_per_eval=4, checkpoint_every_steps=2)
  result = train.train_and_evaluate(sane, str(tmp_path))
  assert np.isfinite(result["loss"])


@pytest.mark.slow
def test_workdir_with_other_config_gives_clear_error(demo_store, tmp_path):
  config = tiny_config(demo_store, num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  other = tiny_config(demo_store)
  other.model.base_width = 8
  with pytest.raises(checkpointing.CheckpointMismatchError, match="model.base_width"):
    train.train_and_evaluate(other, str(tmp_path))


@pytest.mark.slow
def test_setup_reads_the_store_manifest_once_per_run(demo_store, tmp_path, monkeypatch):
  reads = []
  real = store.Manifest.read
  monkeypatch.setattr(store.Manifest, "read", lambda path: reads.append(path) or real(path))
  train.train_and_evaluate(tiny_config(demo_store, num_train_steps=3), str(tmp_path))
  assert reads == [demo_store]


def test_schedule_bookkeeping_round_trips_the_checkpoint_json():
  meta = {"best_value": 0.25, "best_step": 4, "evals_without_improvement": 1,
          "stage_history": [{"stage": 0, "end_step": 6, "best_step": 4}], "done": False}
  schedule = train.Schedule.from_json(meta)
  assert schedule.to_json() == meta  # Same keys as checkpoints written before the class.
  assert not schedule.record(0.5, 8, "loss") and schedule.evals_without_improvement == 2
  assert schedule.record(0.125, 10, "loss") and (schedule.best_step, schedule.best_value) == (
      10, 0.125)
  assert train.Schedule.from_json({"best_value": 0.5, "best_step": 0}).stage_history == []


def test_bad_config_values_name_valid_choices(demo_store, tmp_path):
  with pytest.raises(ValueError, match="choose one of: sgd, adam, adamw"):
    train.train_and_evaluate(tiny_config(demo_store, optimizer="rmsprop"), str(tmp_path))
  with pytest.raises(ValueError, match="num_classes=6"):
    train.train_and_evaluate(tiny_config(demo_store, num_classes=7), str(tmp_path))


def test_learning_rate_must_be_positive_and_nothing_is_written(demo_store, tmp_path):
  for lr in (0.0, -0.01):
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
      train.train_and_evaluate(tiny_config(demo_store, learning_rate=lr), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_data_dir_without_a_store_names_the_field_and_nothing_is_written(tmp_path):
  config = tiny_config(str(tmp_path / "no_store"))
  with pytest.raises(ValueError, match=r"config.data_dir=.*samplecnn_jax.prepare.*"
                                       r"--config.data_dir=STORE"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_store_without_a_validation_split_fails_before_training(tmp_path):
  """`prepare csv` with only train and test rows: main names the splits it has, at once."""
  import soundfile as sf

  rows = ["path,label,split"]
  rng = np.random.default_rng(0)
  for i in range(8):
    sf.write(tmp_path / f"c{i}.wav", rng.normal(0, 0.1, 1000).astype(np.float32), 16000)
    rows.append(f"c{i}.wav,{'ab'[i % 2]},{'train' if i < 6 else 'test'}")
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  prepare.prepare("csv", tmp_path / "labels.csv", tmp_path / "store", workers=1, progress=False)
  report = json.loads((tmp_path / "store" / store.REPORT).read_text())
  assert any("no 'valid' split" in w for w in report["split_warnings"]), "prepare warns too"
  config = tiny_config(str(tmp_path / "store"), dataset="csv", num_classes=2,
                       label_type="multi_class", metric="accuracy")
  with pytest.raises(ValueError, match=r"eval_split='valid'.*it has: test \(2 clips\), "
                                       r"train \(6 clips\)"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_noise_augmentation_without_a_noise_split_names_the_fix(demo_store, tmp_path):
  config = tiny_config(demo_store)
  config.augment.noise_prob = 0.8
  with pytest.raises(ValueError, match=r"no 'background_noise' split.*noise_prob=0"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


DEVICE_SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
from conftest import load_config
from samplecnn_jax import models, sharding, train
config = load_config("test")
mesh = sharding.create_mesh()
model = models.create_model(config.model, config.num_classes)
state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(0)))
state = sharding.replicate(state, mesh)
steps = train.compile_steps(config, mesh, model)
rng = np.random.default_rng(0)
for _ in range(3):
  batch = {{"audio": rng.normal(size=(8, 729)).astype(np.float32),
           "label": (rng.random((8, 6)) > 0.5).astype(np.float32)}}
  state, _ = steps.train_step(state, sharding.global_batch(batch, mesh))
leaves = [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats))]
np.savez({out!r}, *leaves, devices=jax.device_count())
"""


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  """Data parallelism over 4 fake CPU devices gives the 1-device result for the same batch."""
  results = {}
  for devices in (1, 4):
    out = tmp_path / f"{devices}.npz"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    script = DEVICE_SCRIPT.format(tests=str(REPO / "tests"), out=str(out))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO)
    results[devices] = np.load(out)
  assert int(results[4]["devices"]) == 4 and int(results[1]["devices"]) == 1
  names = [k for k in results[1].files if k != "devices"]
  for name in names:
    np.testing.assert_allclose(results[1][name], results[4][name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_speech_commands_excerpt_trains_and_scores_12_classes(shared_data, tmp_path):
  """Real Speech Commands v0.01 clips: 31-way softmax training, 12-class accuracy and matrix."""
  store_dir = tmp_path / "sc"
  prepare.prepare("speech_commands", shared_data / "speech_commands_v0.01_subset", store_dir,
                  workers=1, progress=False)
  config = load_config("speech_commands")
  test = load_config("test")
  config.model = test.model  # Tiny widths; keeps the speech_commands data, loss and metric.
  config.model.input_size = config.input_size = 729
  config.data_dir = str(store_dir)
  for key in ("batch_size", "eval_batch_size", "num_train_steps", "steps_per_eval",
              "checkpoint_every_steps", "log_every_steps", "eval_segments"):
    config[key] = test[key]
  result = train.train_and_evaluate(config, str(tmp_path / "work"))
  saved = json.loads((tmp_path / "work" / "metrics_test.json").read_text())
  matrix = np.asarray(saved["confusion_matrix"])
  assert matrix.shape == (12, 12) and matrix.sum() == saved["num_clips"] == result["num_clips"]
  assert saved["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
  assert 0.0 <= saved["accuracy_train_classes"] <= 1.0


def test_bn_recalibration_makes_eval_mode_match_train_mode_on_training_data(demo_store):
  """Stale running averages make eval mode disagree with train mode; recalibrated ones do not.

  Dropout is off, so train mode differs from eval mode only in the BN statistics: with N = 1
  recalibration batch, eval mode on that batch must give train mode's loss exactly.
  """
  import dataclasses

  from samplecnn_jax import input_pipeline, sharding
  config = tiny_config(demo_store, bn_recalibration_batches=1, optimizer="adam",
                       learning_rate=0.03)
  config.model.block_dropout = 0.0
  config.model.head_dropout = 0.0
  run = train.setup(config, "/tmp/unused_workdir_recal")
  state = train.create_train_state(config, run.model, jax.random.key_data(jax.random.key(0)))
  state = sharding.replicate(state, run.mesh)
  batches = input_pipeline.train_batches(config, run.store, seed=0)
  for k in range(4):
    state, _ = run.steps.train_step(state, sharding.global_batch(batches[k], run.mesh))
  probe = sharding.global_batch(
      input_pipeline.train_batches(config, run.store, seed=config.seed + 1)[0], run.mesh)
  logits, _ = run.model.apply(train.model_variables(state), probe["audio"], train=True,
                              mutable=["batch_stats"])
  train_loss = float(evaluate.loss_per_example(logits, probe["label"], config.label_type).mean())
  stale = float(run.steps.eval_step(train.model_variables(state), probe)[1].mean())
  recal = train.recalibrate_batch_stats(run, state)
  fresh = float(run.steps.eval_step(train.model_variables(recal), probe)[1].mean())
  assert abs(stale - train_loss) > 1e-3  # The running averages lag after 4 steps.
  np.testing.assert_allclose(fresh, train_loss, rtol=1e-4)
  assert_trees_equal(recal.params, state.params)  # No parameter update.
  off = dataclasses.replace(run, config=tiny_config(demo_store, bn_recalibration_batches=0))
  assert train.recalibrate_batch_stats(off, state) is state  # 0 = the paper's behaviour.


RECAL_SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
from conftest import load_config
from samplecnn_jax import models, sharding, train
config = load_config("test")
config.data_dir = {store!r}
config.bn_recalibration_batches = 3
run = train.setup(config, {workdir!r})
state = train.create_train_state(config, run.model, jax.random.key_data(jax.random.key(0)))
state = sharding.replicate(state, run.mesh)
state = train.recalibrate_batch_stats(run, state)
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(state.batch_stats)],
         devices=jax.device_count())
"""


@pytest.mark.slow
def test_bn_recalibration_gives_the_same_statistics_on_1_and_4_devices(demo_store, tmp_path):
  results = {}
  for devices in (1, 4):
    out = tmp_path / f"recal{devices}.npz"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    script = RECAL_SCRIPT.format(tests=str(REPO / "tests"), store=demo_store, out=str(out),
                                 workdir=str(tmp_path / f"w{devices}"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO)
    results[devices] = np.load(out)
  assert int(results[4]["devices"]) == 4
  names = [k for k in results[1].files if k != "devices"]
  assert names
  for name in names:
    np.testing.assert_allclose(results[1][name], results[4][name], rtol=1e-4, atol=1e-5)
