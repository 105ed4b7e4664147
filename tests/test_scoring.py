"""Tests for samplecnn_jax.scoring: the batching engine, and that the module needs no JAX.

What a scorer gives on files and arrays is tested through its two networks:
test_inference.py (the JAX `Predictor`) and test_predict.py / test_export.py (the ONNX one).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from samplecnn_jax import scoring, segments


def test_a_stream_that_fits_one_batch_runs_a_small_forward_pass():
  """3 one-segment files run as 4 rows, not 64; longer streams keep the one full shape."""
  shapes = []

  def score(batch):
    shapes.append(batch.shape)
    return np.full((len(batch), 2), 0.5, np.float32) + batch[:, :1]

  items = [(i, np.full((1, 5), i, np.float32)) for i in range(3)]
  out = list(scoring.stream_batches(items, score, batch_size=64, input_size=5))
  assert shapes == [(4, 5)]
  assert [k for k, _ in out] == [0, 1, 2] and segments.pool_segments(out[2][1])[0] == (
      pytest.approx(2.5))
  shapes.clear()
  items = [(i, np.zeros((10, 5), np.float32)) for i in range(7)]  # 70 segments.
  assert len(list(scoring.stream_batches(items, score, batch_size=64, input_size=5))) == 7
  assert shapes == [(64, 5), (64, 5)]


def test_outputs_may_be_dicts_of_rows():
  """A network that returns several outputs per row gives each request its rows of each."""
  def score(batch):
    return {scoring.PROBABILITIES: batch[:, :2] * 2, scoring.EMBEDDING: batch[:, :3]}

  items = [(i, np.full((i + 1, 4), i, np.float32)) for i in range(4)]  # 10 segments.
  out = dict(scoring.stream_batches(items, score, batch_size=4, input_size=4))
  assert sorted(out) == [0, 1, 2, 3]
  np.testing.assert_array_equal(out[3][scoring.PROBABILITIES], np.full((4, 2), 6.0))
  assert out[2][scoring.EMBEDDING].shape == (3, 3)


def test_clip_inputs_refuse_a_bad_segment_count():
  with pytest.raises(ValueError, match="num_segments must be an int >= 1 or 'cover'"):
    scoring.ClipInputs(16000, 729, 0, segments.InputScaling(False, 0.0, 1.0))


@pytest.mark.slow
def test_scoring_imports_no_jax():
  code = ("import sys, samplecnn_jax.scoring, samplecnn_jax.exported, samplecnn_jax.predict; "
          "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
