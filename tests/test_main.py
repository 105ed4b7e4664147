"""Tests for samplecnn_jax.main: the training / eval-only command line and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_config

from samplecnn_jax import cli, evaluate, main, train, workdir_files

TEST_CONFIG = str(REPO / "configs" / "test.py")


def _run(capsys, *args: str) -> tuple[int, str]:
  code = main.main(["main", *args])
  return code, capsys.readouterr().err


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if ": error: " in line]


@pytest.mark.parametrize("args, names", [
    # A missing store: names the prepare command and the flag.
    (["--config=" + TEST_CONFIG, "--config.data_dir={tmp}/nothing"],
     ["is not a prepared store", "samplecnn_jax.prepare", "--config.data_dir"]),
    # Eval-only in a folder training never wrote: names --config=.
    (["--mode=eval"], ["has no config.json", "--config="]),
    # A value no run can use: names the field.
    (["--config=" + TEST_CONFIG, "--config.data_dir={store}", "--config.learning_rate=-1"],
     ["config.learning_rate must be > 0"]),
    # An unknown variant after the colon: names the valid ones.
    (["--config=" + TEST_CONFIG + ":resnet"], ["'resnet' is neither a model variant", "Valid variants", "samplecnn"]),
    # A config file that does not exist: names the project's configs.
    (["--config=" + str(REPO / "configs" / "nope.py")], ["no such config file", "demo.py"]),
    # Training without a config.
    ([], ["training needs --config=configs/NAME.py"]),
    # A misspelt override: names the closest fields.
    (["--config=" + TEST_CONFIG, "--config.model.base_widht=8"],
     ["no field 'model.base_widht'", "model.base_width"]),
    # A stray argument or flag.
    (["--config=" + TEST_CONFIG, "extra"], ["unexpected arguments ['extra']"]),
    (["--config=" + TEST_CONFIG, "--batch_size=3"], ["Unknown command line flag 'batch_size'"]),
])
def test_user_mistakes_are_one_line_and_exit_2(capsys, demo_store, tmp_path, args, names):
  work = tmp_path / "w"
  args = [a.format(tmp=tmp_path, store=demo_store) for a in args]
  code, stderr = _run(capsys, f"--workdir={work}", *args)
  assert code == cli.EXIT_USAGE
  assert len(_error_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
  for name in names:
    assert name in _error_lines(stderr)[0]
  assert not (work / "config.json").exists() and not (work / "checkpoints").exists()


def test_missing_workdir_is_named(capsys):
  code, stderr = _run(capsys, f"--config={TEST_CONFIG}")
  assert code == cli.EXIT_USAGE and "--workdir is required" in stderr


def test_verbose_shows_the_traceback(tmp_path):
  with pytest.raises(ValueError, match="is not a prepared store"):
    main.main(["main", f"--workdir={tmp_path / 'w'}", f"--config={TEST_CONFIG}",
               f"--config.data_dir={tmp_path / 'nothing'}", "--verbose"])


def test_eval_only_overrides_apply_to_the_recorded_config(capsys, demo_store, tmp_path,
                                                          monkeypatch):
  """`--mode=eval --workdir=DIR --config.FIELD=V` starts from DIR/config.json (no --config)."""
  recorded = tiny_config(demo_store)
  workdir_files.write_config(tmp_path, recorded)
  seen = {}
  monkeypatch.setattr(evaluate, "evaluate_checkpoint",
                      lambda config, work, split, which: seen.update(
                          config=config, work=work, split=split, which=which))
  code, stderr = _run(capsys, f"--workdir={tmp_path}", "--mode=eval", "--split=valid",
                      "--checkpoint=latest", "--config.eval_segments=5")
  assert code == 0, stderr
  assert seen["config"].eval_segments == 5 and recorded.eval_segments != 5
  assert seen["config"].model.base_width == recorded.model.base_width
  assert (seen["work"], seen["split"], seen["which"]) == (str(tmp_path), "valid", "latest")
  code, stderr = _run(capsys, f"--workdir={tmp_path}", "--mode=eval", "--config.eval_segmnts=5")
  assert code == cli.EXIT_USAGE and "config.json has no field 'eval_segmnts'" in stderr
  assert "eval_segments" in _error_lines(stderr)[0]


@pytest.mark.slow
def test_second_process_on_a_workdir_exits_at_once_naming_the_holder(demo_store, tmp_path):
  with workdir_files.exclusive(tmp_path):
    cmd = [sys.executable, "-m", "samplecnn_jax.main", "--config=configs/test.py",
           f"--workdir={tmp_path}", f"--config.data_dir={demo_store}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-2000:]
    assert len(_error_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and "in use by another training run" in proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.slow
def test_eval_only_command_scores_with_the_recorded_config(demo_store, tmp_path):
  config = tiny_config(demo_store, num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  expected = evaluate.evaluate_checkpoint(config, str(tmp_path), "valid", checkpoint="latest")
  (tmp_path / "metrics_valid.json").unlink()
  cmd = [sys.executable, "-m", "samplecnn_jax.main", f"--workdir={tmp_path}", "--mode=eval",
         "--split=valid", "--checkpoint=latest"]
  done = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
  for noise in main.NOISE:
    assert noise not in done.stderr, "a CPU user's eval log has no backend/read-only noise"
  assert "latest checkpoint (step 3) on valid" in done.stderr
  again = workdir_files.read_metrics(Path(tmp_path), "valid")
  assert again["f_score"] == pytest.approx(expected["f_score"]) and again["step"] == 3
