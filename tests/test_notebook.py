"""Runs notebooks/samplecnn_jax.ipynb top to bottom, headless, with its tiny parameters.

The cell tagged `parameters` is replaced by tiny values (as papermill would inject them),
the notebook runs in a fresh kernel of this interpreter in a temporary working directory,
and the test checks that no cell failed and that it produced what it promises: a trained
workdir with metrics, the filter pictures, figures in the outputs and a prediction.
"""

from __future__ import annotations

import json
import sys

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "samplecnn_jax.ipynb"
CELL_TIMEOUT_S = 240  # Per cell; the whole tiny run takes well under a minute.


def tiny_parameters(workdir: str, data_dir: str) -> str:
  return "\n".join([
      "TINY = True",
      f"WORKDIR = {workdir!r}",
      f"DATA_DIR = {data_dir!r}",
      "STEPS = 0",
      "DEMO_CLIPS = {}",
      "PREPARE_WORKERS = 1",
      f"REPO_DIR = {str(REPO)!r}",
      'REPO_URL = ""',
  ])


def outputs_of(cell, kind: str) -> list:
  return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


@pytest.mark.slow  # Trains, visualises and predicts end to end in a kernel.
def test_notebook_runs_headless_with_tiny_parameters(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  defaults = tagged[0].source
  for name in ("TINY", "WORKDIR", "DATA_DIR", "STEPS", "DEMO_CLIPS", "PREPARE_WORKERS",
               "REPO_DIR", "REPO_URL"):
    assert f"{name} = " in defaults, f"parameter {name} is not in the parameters cell"
  tagged[0].source = tiny_parameters("workdir", "prepared")

  # The kernelspec's "python" is replaced by sys.executable: this interpreter, this venv.
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # Raises CellExecutionError, with the cell and its traceback, on failure.

  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
  assert f"from {REPO}" in text  # The checkout under test, not another installed copy.
  assert f"({sys.executable})" in text  # The kernel ran this interpreter (this venv).

  workdir = tmp_path / "workdir"
  test_metrics = json.loads((workdir / "metrics_test.json").read_text())
  assert test_metrics["split"] == "test" and test_metrics["num_clips"] == 12
  assert 0.0 <= test_metrics["f_score"] <= 1.0
  assert json.loads((workdir / "metrics_valid.json").read_text())["checkpoint"] == "best"
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      "3", "6"]
  assert (workdir / "filters" / "filters.png").stat().st_size > 1000
  assert len(list((workdir / "filters").glob("layer*.png"))) == 6  # 6 layers of the tiny model.
  assert (tmp_path / "prepared" / "manifest.json").exists()

  figures = [c for c in code if outputs_of(c, "image/png")]
  assert len(figures) >= 2, "the waveform plot and the filter picture should be displayed"
  assert any(outputs_of(c, "text/html") for c in code), "an audio player should be shown"
  assert "true labels:" in text and "above threshold:" in text
  prediction_lines = text.split("above threshold:")[1].splitlines()[1:4]
  scores = [float(line.split()[-1]) for line in prediction_lines]
  assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
  assert scores == sorted(scores, reverse=True)  # top_k is sorted by score.
