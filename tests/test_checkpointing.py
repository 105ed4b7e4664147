"""Tests for samplecnn_jax.checkpointing: damaged checkpoints fall back to older complete ones,
and a changed optimizer resumes with a fresh optimizer state.

One short run (6 steps, checkpoints at 3 and 6, best at 3) is trained once; each test damages
a copy of its workdir the way a preempted write, a full disk or a flaky mount does, then
restores it (most tests restore with the Checkpointer alone; a few resume training).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_config

from samplecnn_jax import checkpointing, input_pipeline, models, store, train


@pytest.fixture(scope="module")
def trained(demo_store, tmp_path_factory) -> Path:
  """A finished 6-step run: latest checkpoints 3 and 6, the best one at 3 (lr 0.01, SGD)."""
  workdir = tmp_path_factory.mktemp("trained")
  config = tiny_config(demo_store, best_metric="f_score")
  train.train_and_evaluate(config, str(workdir))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]
  assert best_dir(workdir).name == "3", "the tests below need a best step older than the latest"
  return workdir


def copy_of(trained: Path, tmp_path: Path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  (workdir / ".lock").unlink(missing_ok=True)
  return workdir


def best_dir(workdir: Path) -> Path:
  return next(p for p in (workdir / "best").iterdir() if p.name.isdigit())


def truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def largest_data_file(step_dir: Path) -> Path:
  """The biggest tensorstore chunk that a restore of the step's train state reads."""
  files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


DAMAGE = {
    "meta/metadata": lambda step: truncate(step / "meta" / "metadata"),
    "tensorstore data file": lambda step: truncate(largest_data_file(step)),
    "ocdbt manifest": lambda step: truncate(step / "state" / "manifest.ocdbt"),
    "iterator JSON": lambda step: truncate(step / "data" / "process_0-of-1.json"),
    "state _METADATA": lambda step: truncate(step / "state" / "_METADATA"),
}


@pytest.fixture(scope="module")
def template(demo_store):
  """A fresh train state of the tiny model, and a function making its train iterator."""
  config = tiny_config(demo_store, best_metric="f_score")
  model = models.create_model(config.model, config.num_classes)
  data = store.Store.open(demo_store)
  state = train.create_train_state(config, model, np.zeros(2, np.uint32))
  return state, lambda: input_pipeline.create_train_iterator(config, data, seed=0)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_moved_aside_and_the_older_one_restores(
    damage, trained, template, tmp_path, caplog):
  workdir = copy_of(trained, tmp_path)
  DAMAGE[damage](workdir / "checkpoints" / "6")
  state, new_iterator = template
  ckpt = checkpointing.Checkpointer(workdir)
  with caplog.at_level(logging.WARNING):
    restored, meta = ckpt.restore_latest(state, new_iterator())
  ckpt.close()
  assert int(restored.step) == 3 and meta["best_step"] == 3
  assert "checkpoint of step 6 does not restore" in caplog.text
  assert (workdir / "damaged" / "checkpoints_6").is_dir(), "moved aside, never deleted"
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]


def test_no_restorable_checkpoint_stops_naming_every_step_and_moves_nothing(
    trained, template, tmp_path):
  workdir = copy_of(trained, tmp_path)
  for step in ("3", "6"):
    truncate(workdir / "checkpoints" / step / "meta" / "metadata")
  state, new_iterator = template
  ckpt = checkpointing.Checkpointer(workdir)
  with pytest.raises(checkpointing.DamagedCheckpointError) as error:
    ckpt.restore_latest(state, new_iterator())
  ckpt.close()
  message = str(error.value)
  assert "step 6:" in message and "step 3:" in message and "JSONDecodeError" in message
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]
  assert not (workdir / "damaged").exists()


def test_non_finite_newest_checkpoint_counts_as_damaged(trained, template, tmp_path):
  """A checkpoint that restores but holds NaN (e.g. written by an older version) is skipped."""
  workdir = copy_of(trained, tmp_path)
  state, new_iterator = template
  ckpt = checkpointing.Checkpointer(workdir)
  iterator = new_iterator()
  restored, meta = ckpt.restore_latest(state, iterator)
  logits = {k: v * np.nan for k, v in restored.params["logits"].items()}
  shutil.rmtree(workdir / "checkpoints" / "6")
  ckpt.latest.reload()
  ckpt.save(restored.replace(params={**restored.params, "logits": logits},
                             step=np.asarray(6, np.int32)), iterator, meta)
  ckpt.wait()
  again, _ = ckpt.restore_latest(state, new_iterator(), validate=train._non_finite_reason)
  ckpt.close()
  assert int(again.step) == 3
  assert (workdir / "damaged" / "checkpoints_6").is_dir()


def test_damaged_best_checkpoint_is_moved_aside_with_the_reason(trained, template, tmp_path):
  workdir = copy_of(trained, tmp_path)
  best = best_dir(workdir)
  truncate(largest_data_file(best))
  ckpt = checkpointing.Checkpointer(workdir)
  with pytest.raises(checkpointing.DamagedCheckpointError, match=f"step {best.name}: "):
    ckpt.restore_best(template[0])
  assert not ckpt.has_best()
  ckpt.close()
  assert (workdir / "damaged" / f"best_{best.name}").is_dir()


def test_a_best_newer_than_the_resumed_step_is_moved_to_superseded(trained, tmp_path):
  """Issue 22 failure 1: a run resuming at step 2 must not keep (or clash with) best/3."""
  workdir = copy_of(trained, tmp_path)
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.set_aside_best_after(3) == [], "a best at or before the step stays"
  assert ckpt.set_aside_best_after(2) == [workdir / "superseded" / "best_3"]
  assert not ckpt.has_best()
  ckpt.close()
  assert (workdir / "superseded" / "best_3" / "state").is_dir(), "moved whole, not deleted"


def test_save_best_at_a_step_that_exists_moves_the_old_one_aside(
    demo_store, trained, template, tmp_path):
  """Orbax refuses an existing step (StepAlreadyExistsError); the old best is kept aside."""
  workdir = copy_of(trained, tmp_path)
  state, new_iterator = template
  ckpt = checkpointing.Checkpointer(workdir)
  restored, meta = ckpt.restore_latest(state, new_iterator())
  ckpt.save_best(restored.replace(step=np.asarray(3, np.int32)), meta)
  ckpt.close()
  assert (workdir / "superseded" / "best_3").is_dir()
  assert best_dir(workdir).name == "3"
  saved = checkpointing.load_variables(workdir, tiny_config(demo_store), "best")
  np.testing.assert_array_equal(np.asarray(saved["params"]["logits"]["kernel"]),
                                np.asarray(restored.params["logits"]["kernel"]))


@pytest.mark.slow  # Trains.
def test_resume_after_damage_continues_from_the_older_step_and_saves_a_new_best(
    demo_store, trained, tmp_path, caplog):
  workdir = copy_of(trained, tmp_path)
  truncate(workdir / "checkpoints" / "6" / "meta" / "metadata")
  best = best_dir(workdir)
  truncate(largest_data_file(best))
  config = tiny_config(demo_store, best_metric="f_score", num_train_steps=9)
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(config, str(workdir))
  assert "latest checkpoint of step 6 does not restore" in caplog.text
  assert f"best checkpoint of step {best.name} does not restore" in caplog.text
  assert "optimizer state starts fresh" not in caplog.text, "same optimizer: its state restores"
  # Resumed at step 3 (3 -> 9 validates at 6 and 9), and a new best was saved (at 6).
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["6", "9"]
  assert [p.name for p in (workdir / "best").iterdir() if p.name.isdigit()] == ["6"]
  assert result["step"] == 6
  assert sorted(p.name for p in (workdir / "damaged").iterdir()) == [f"best_{best.name}",
                                                                     "checkpoints_6"]


@pytest.mark.slow  # Trains.
def test_changed_optimizer_resumes_with_a_fresh_optimizer_state_both_ways(
    demo_store, trained, template, tmp_path, caplog):
  """SGD -> Adam with clipping (a real resumed run), then that Adam checkpoint -> SGD."""
  workdir = copy_of(trained, tmp_path)
  before = checkpointing.load_variables(workdir, tiny_config(demo_store), "latest")
  config = tiny_config(demo_store, best_metric="f_score", num_train_steps=7,
                       checkpoint_every_steps=1, grad_clip_norm=1.0, optimizer="adam")
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, str(workdir))
  assert "the optimizer state starts fresh" in caplog.text
  assert checkpointing.checkpoint_step(workdir, "latest") == 7
  after = checkpointing.load_variables(workdir, tiny_config(demo_store), "latest")
  moved = float(np.abs(np.asarray(after["params"]["logits"]["kernel"])
                       - np.asarray(before["params"]["logits"]["kernel"])).max())
  assert 0.0 < moved < 1.0, "training continued from the restored weights"

  caplog.clear()
  sgd, new_iterator = template  # The paper's SGD, no clipping.
  ckpt = checkpointing.Checkpointer(workdir)
  with caplog.at_level(logging.WARNING):
    restored, _ = ckpt.restore_latest(sgd, new_iterator())
  ckpt.close()
  assert "the optimizer state starts fresh" in caplog.text and int(restored.step) == 7
  for got, want in zip(jax.tree.leaves(restored.params), jax.tree.leaves(after["params"]),
                       strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for got, fresh in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(sgd.opt_state),
                        strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(fresh))
