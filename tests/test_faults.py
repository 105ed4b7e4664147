"""The fault-injection matrix of a workdir (docs/faults.md): kills during saves and writes,
damaged checkpoints and files, a full disk, and two faults in a row, on real Orbax and the tiny
test config.

Every row starts from a copy of one undisturbed 9-step run (`first`), injects its fault, and
trains on to 12 steps. The rerun must either end with exactly the parameters, best checkpoint
and test metrics of an undisturbed 12-step run (`reference`), or stop with one line naming the
damaged file and the way out. Nothing a user had is deleted: damaged files go to damaged/, a
best checkpoint the resumed run would overwrite goes to superseded/. Rows that need a kill run
`main` in a subprocess (a launcher that SIGKILLs itself at the right call) and are `slow`;
the rest run in-process. Preemption (SIGTERM/SIGINT) is tested with the training loop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, tiny_config

from samplecnn_jax import (
  checkpointing,
  evaluate,
  export,
  filters,
  inference,
  models,
  store,
  train,
  transfer,
)

STEPS = 12  # The reruns' num_train_steps; `first` stops at 9 (validations at 3, 6, 9, 12).


def config_for(demo_store: str, steps: int = STEPS):
  # best_metric=loss: every validation of this config improves, so every one saves a best.
  return tiny_config(demo_store, num_train_steps=steps, best_metric="loss")


@pytest.fixture(scope="module")
def reference(demo_store, tmp_path_factory) -> Path:
  """The undisturbed 12-step run every row must end equal to."""
  workdir = tmp_path_factory.mktemp("reference")
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def first(demo_store, tmp_path_factory) -> Path:
  """The 9-step run each row disturbs: latest checkpoints 6 and 9, best 9."""
  workdir = tmp_path_factory.mktemp("first")
  train.train_and_evaluate(config_for(demo_store, 9), str(workdir))
  assert steps_of(workdir / "checkpoints") == [6, 9] and steps_of(workdir / "best") == [9]
  return workdir


def steps_of(folder: Path) -> list[int]:
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def copy_of(workdir: Path, tmp_path: Path) -> Path:
  target = tmp_path / "run"
  shutil.copytree(workdir, target)
  (target / ".lock").unlink(missing_ok=True)
  return target


def variables(workdir: Path, config, which: str) -> dict:
  return checkpointing.load_variables(workdir, config, which)


def assert_same_run(workdir: Path, reference: Path, config) -> None:
  """Exact resume: the latest and best checkpoints and the test metrics of `reference`."""
  for which in ("latest", "best"):
    assert (checkpointing.checkpoint_step(workdir, which)
            == checkpointing.checkpoint_step(reference, which)), which
    for got, want in zip(jax.tree.leaves(variables(workdir, config, which)),
                         jax.tree.leaves(variables(reference, config, which)), strict=True):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  metrics = lambda path: json.loads((path / "metrics_test.json").read_text())
  assert metrics(workdir) == metrics(reference)


# --- Damage ---------------------------------------------------------------------------------


def truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
  path.write_bytes(np.random.default_rng(0).bytes(max(path.stat().st_size, 64)))


def damage_step(step_dir: Path, how: str) -> None:
  """truncate: every file of the step (a copy cut short); delete / garbage: its OCDBT
  manifest, without which no array of the step can be found."""
  if how == "truncate":
    for path in step_dir.rglob("*"):
      if path.is_file():
        truncate(path)
  elif how == "delete":
    (step_dir / "state" / "manifest.ocdbt").unlink()
  else:
    garbage(step_dir / "state" / "manifest.ocdbt")


# The three damages. Each training row uses one or two of them (every kind of damage takes the
# same path through a restore; the readers' rows and test_checkpointing.py try them all).
HOW = ("truncate", "delete", "garbage")


@pytest.mark.slow  # Trains (2 rows).
@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_damaged_latest_resumes_from_the_older_one_and_keeps_both_bests(
    how, demo_store, first, reference, tmp_path):
  """Issue 22 failure 1: the rerun resumes from 6, re-reaches 9 and saves its best there; the
  first run's best of step 9 is kept in superseded/ (no StepAlreadyExistsError)."""
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "checkpoints" / "9", how)
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
  assert (workdir / "damaged" / "checkpoints_9").is_dir(), "moved aside, never deleted"
  assert (workdir / "superseded" / "best_9").is_dir(), "the first run's best is kept"


@pytest.mark.slow  # Trains.
def test_damaged_best_is_moved_aside_and_the_run_finishes(
    demo_store, first, reference, tmp_path):
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "best" / "9", "delete")
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
  assert (workdir / "damaged" / "best_9").is_dir()


@pytest.mark.slow  # Trains.
def test_damaged_latest_and_best_resume_from_the_older_latest(
    demo_store, first, reference, tmp_path):
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "checkpoints" / "9", "truncate")
  damage_step(workdir / "best" / "9", "garbage")
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
  assert sorted(p.name for p in (workdir / "damaged").iterdir()) == ["best_9", "checkpoints_9"]


@pytest.mark.slow  # Trains.
def test_damaged_latest_but_one_is_never_read_and_the_run_finishes(
    demo_store, first, reference, tmp_path):
  """The newest checkpoint restores, so step 6 is never read; it is rotated out as usual."""
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "checkpoints" / "6", "truncate")
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))


@pytest.mark.slow  # Trains (2 rows).
@pytest.mark.parametrize("name", ["config.json", "labels.json"])
def test_damaged_workdir_json_is_moved_aside_and_written_again(
    name, demo_store, first, reference, tmp_path):
  workdir = copy_of(first, tmp_path)
  truncate(workdir / name)
  damaged = (workdir / name).read_bytes()
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
  assert (workdir / "damaged" / name).read_bytes() == damaged
  assert (workdir / name).read_bytes() == (reference / name).read_bytes()


@pytest.mark.slow  # Trains.
def test_damaged_tensorboard_event_file_is_left_alone(demo_store, first, reference, tmp_path):
  """TensorBoard skips a truncated record; each run writes its own event file."""
  workdir = copy_of(first, tmp_path)
  (events,) = (workdir / "tensorboard").glob("events.*")
  garbage(events)
  damaged = events.read_bytes()
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
  assert events.read_bytes() == damaged


@pytest.mark.slow  # Trains until the shard is read.
def test_damaged_store_shard_stops_naming_the_shard(demo_store, first, tmp_path):
  data = tmp_path / "store"
  shutil.copytree(demo_store, data)
  shard = data / store.Manifest.read(data).splits["train"].shards[0]
  garbage(shard)
  workdir = copy_of(first, tmp_path)
  config = config_for(str(data))
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert isinstance(error.value, ValueError), "a command prints it in one line (exit 2)"
  assert len(message.splitlines()) == 1 and f"store shard {shard} is damaged" in message
  assert "re-run the `prepare` command" in message
  assert steps_of(workdir / "checkpoints") == [6, 9], "nothing of the workdir is touched"


# --- A full disk ------------------------------------------------------------------------------


def fail_best_saves(monkeypatch, times: int = 1) -> list[str]:
  """The next `times` writes of a best checkpoint's JSON raise ENOSPC (after Orbax created
  the step's temporary folder and wrote its arrays); returns the folders they hit."""
  hit = []
  for name in ("save", "async_save"):
    original = getattr(ocp.JsonCheckpointHandler, name)

    def failing(self, directory, *args, _original=original, **kwargs):
      if f"{os.sep}best{os.sep}" in str(directory) and len(hit) < times:
        hit.append(str(directory))
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
      return _original(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, name, failing)
  return hit


@pytest.mark.slow  # Trains.
def test_disk_full_during_a_best_save_stops_and_the_rerun_finishes(
    demo_store, first, reference, tmp_path, monkeypatch):
  workdir = copy_of(first, tmp_path)
  hit = fail_best_saves(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert hit, "the fault was injected"
  assert steps_of(workdir / "best") == [9], "the previous best is intact"
  monkeypatch.undo()
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))


@pytest.mark.slow  # Trains three times.
def test_two_faults_in_a_row_damaged_latest_then_disk_full(
    demo_store, first, reference, tmp_path, monkeypatch):
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "checkpoints" / "9", "delete")
  fail_best_saves(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    train.train_and_evaluate(config_for(demo_store), str(workdir))
  monkeypatch.undo()
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
  assert (workdir / "damaged" / "checkpoints_9").is_dir()
  assert (workdir / "superseded" / "best_9").is_dir()


# --- Readers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
def test_a_reader_falls_back_from_a_damaged_best_and_moves_nothing(
    how, demo_store, first, tmp_path):
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "best" / "9", how)
  before = sorted(str(p) for p in workdir.rglob("*"))
  loaded = checkpointing.read_checkpoint(workdir, config_for(demo_store, 9))
  assert (loaded.which, loaded.step) == ("latest", 9)
  assert f"best step 9: {workdir / 'best' / '9'}" in loaded.note
  assert "used the latest checkpoint of step 9" in loaded.note
  assert sorted(str(p) for p in workdir.rglob("*")) == before, "a reader moves nothing"
  for got, want in zip(jax.tree.leaves(loaded.variables),
                       jax.tree.leaves(variables(first, config_for(demo_store, 9), "latest")),
                       strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("reader", ["visualize", "init_from", "eval", "export"])
def test_every_reader_falls_back_from_a_damaged_best(
    reader, demo_store, first, tmp_path, caplog):
  """visualize (filters.load_model), init_from (transfer.load_into), --mode=eval
  (evaluate.evaluate_checkpoint) and export (export.load_run) load the latest checkpoint and
  say why."""
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "best" / "9", "garbage")
  config = config_for(demo_store, 9)
  with caplog.at_level(logging.WARNING):
    if reader == "visualize":
      got = filters.load_model(config, str(workdir))[1]
    elif reader == "init_from":
      model = models.create_model(config.model, config.num_classes)
      fresh = model.init(jax.random.key(0), jnp.zeros((1, config.input_size)), train=False)
      got = transfer.load_into(tiny_config(demo_store, init_from=str(workdir)), dict(fresh))
    elif reader == "eval":
      result = evaluate.evaluate_checkpoint(None, str(workdir), "valid")
      assert result["checkpoint"] == "latest" and "best step 9" in result["checkpoint_note"]
      recorded = json.loads((workdir / "metrics_valid.json").read_text())
      assert recorded["step"] == 9 and recorded["checkpoint_note"] == result["checkpoint_note"]
      got = None
    if reader == "export":
      _, got, _, note = export.load_run(workdir)
      logging.warning("%s", note)  # The command prints it as `export: note: ...`.
  assert "used the latest checkpoint of step 9" in caplog.text
  if got is not None:
    for leaf, want in zip(jax.tree.leaves(got["params"]),
                          jax.tree.leaves(variables(first, config, "latest")["params"]),
                          strict=True):
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want))


def test_a_reader_with_nothing_restorable_raises_one_line_naming_the_files(
    demo_store, first, tmp_path):
  workdir = copy_of(first, tmp_path)
  for step_dir in (workdir / "best" / "9", workdir / "checkpoints" / "9",
                   workdir / "checkpoints" / "6"):
    damage_step(step_dir, "garbage")
  with pytest.raises(checkpointing.UnreadableCheckpointError) as error:
    checkpointing.read_checkpoint(workdir, config_for(demo_store, 9))
  message = str(error.value)
  assert "\n" not in message and isinstance(error.value, ValueError)
  for step_dir in ("best/9", "checkpoints/9", "checkpoints/6"):
    assert str(workdir / step_dir / "state" / "manifest.ocdbt") in message
  assert "new --workdir" in message
  assert not (workdir / "damaged").exists()


def test_predictor_from_a_workdir_with_a_damaged_best_says_what_it_used(
    demo_store, first, tmp_path):
  workdir = copy_of(first, tmp_path)
  damage_step(workdir / "best" / "9", "truncate")
  predictor = inference.Predictor.from_workdir(workdir)
  assert "used the latest checkpoint of step 9" in predictor.checkpoint_note
  assert inference.Predictor.from_workdir(first).checkpoint_note is None


def test_a_reader_names_a_damaged_config_json_and_the_way_out(first, tmp_path):
  workdir = copy_of(first, tmp_path)
  truncate(workdir / "config.json")
  with pytest.raises(ValueError, match="config.json is damaged .*--config=configs/NAME.py"):
    inference.Predictor.from_workdir(workdir)


# --- Kills ------------------------------------------------------------------------------------

# `main`, which SIGKILLs itself at the first event argv[1] names:
#   checkpoints | best: the JSON write of a latest or best save (its arrays are written,
#     the step is still under Orbax's temporary name);
#   a workdir file name: after its temporary file is written, before the rename.
KILL_AT = """
import os, runpy, signal, sys
target = sys.argv.pop(1)
def die():
  os.kill(os.getpid(), signal.SIGKILL)
if target in ("checkpoints", "best"):
  import orbax.checkpoint as ocp
  for name in ("save", "async_save"):
    def killing(self, directory, *args, _original=getattr(ocp.JsonCheckpointHandler, name),
                **kwargs):
      if f"{os.sep}{target}{os.sep}" in str(directory):
        die()
      return _original(self, directory, *args, **kwargs)
    setattr(ocp.JsonCheckpointHandler, name, killing)
else:
  replace = os.replace
  def replace_or_die(src, dst, *args, **kwargs):
    if os.path.basename(dst) == target:
      die()
    return replace(src, dst, *args, **kwargs)
  os.replace = replace_or_die
runpy.run_module("samplecnn_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow  # A subprocess per row.
@pytest.mark.parametrize("target", ["checkpoints", "best", "config.json", "labels.json",
                                    "metrics_valid.json"])
def test_kill_during_a_write_then_the_rerun_finishes_the_same_run(
    target, demo_store, first, reference, tmp_path):
  workdir = copy_of(first, tmp_path)
  before = {name: (workdir / name).read_bytes()
            for name in ("config.json", "labels.json", "metrics_valid.json")}
  # The resumed run writes config.json and labels.json, validates at 12 (metrics, then the
  # best save), then saves the latest checkpoint of step 12.
  proc = subprocess.run(
      [sys.executable, "-c", KILL_AT, target, f"--config={REPO / 'configs' / 'test.py'}",
       f"--workdir={workdir}", f"--config.data_dir={demo_store}",
       f"--config.num_train_steps={STEPS}", "--config.best_metric=loss"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]  # Killed at the write.
  if target in before:  # The old file is whole: written atomically.
    assert (workdir / target).read_bytes() == before[target]
  assert steps_of(workdir / "best") == ([12] if target == "checkpoints" else [9])
  assert steps_of(workdir / "checkpoints") == [6, 9], "killed before step 12 was saved"
  train.train_and_evaluate(config_for(demo_store), str(workdir))
  assert_same_run(workdir, reference, config_for(demo_store))
