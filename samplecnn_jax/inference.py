"""Inference with a trained run: the `Predictor` engine for clip scores, embeddings and timelines.

From Python (load the model once, call it many times):

  from samplecnn_jax.inference import Predictor

  predictor = Predictor.from_workdir("workdirs/dcase")
  scores = predictor.predict_waveform(waveform, sample_rate)     # (num_classes,)
  results = predictor.predict_files(["a.wav", "b.flac"])         # one record per file

A clip is scored as in evaluation: decoded to mono at the run's sample rate, cut into
`config.eval_segments` evenly spread segments of `config.input_size` samples, scaled as the
run scaled its inputs (`segments.py`), and the segment probabilities (sigmoid or softmax)
averaged. This module holds what is JAX's in that:
- `load_labels` and `Predictor.from_workdir`: what a workdir holds (config, labels, weights);
- `Network`: one jitted forward pass that gives each segment's probabilities and embedding.
Everything else (segments and scaling, batching, files, result records) is
`scoring.ClipScorer`'s, which an exported ONNX model shares (`exported.OnnxPredictor`).

This module is an engine: it takes arrays, paths and config objects and returns arrays and
records. It parses no arguments, prints nothing and writes no files (`predict.py` is the
command). It does not train, evaluate against labels or read the prepared store's audio.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from samplecnn_jax import (
  checkpointing,
  incremental,
  input_pipeline,
  models,
  scoring,
  store,
  workdir_files,
)
from samplecnn_jax.workdir_files import LabelInfo

# --- What a workdir holds -------------------------------------------------------------------


def load_labels(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, path: str | None = None
) -> LabelInfo:
  """The class names of a run: `path`, else `workdir/labels.json`, else the store's manifest.

  The prepared store is often not on the machine that predicts, so training writes
  `labels.json` beside the checkpoints; older workdirs fall back to the manifest at
  `config.data_dir`, and, when that is absent too, to numbered names (with a warning).
  """
  data_dir = input_pipeline.data_dir_for(config)
  labels = workdir_files.read_labels(workdir, data_dir, path)
  if labels is None:
    logging.warning(
        "No %s in %s and no store manifest at %s: classes are named class_0..class_%d.",
        workdir_files.LABELS_FILE, workdir, Path(data_dir) / store.MANIFEST,
        config.num_classes - 1,
    )
    return LabelInfo.numbered(config.num_classes, config.label_type)
  if len(labels.vocabulary) != config.num_classes:
    raise ValueError(
        f"{labels.source} names {len(labels.vocabulary)} classes but the model has "
        f"config.num_classes={config.num_classes} outputs: they belong to different runs."
    )
  return labels


# --- The network ----------------------------------------------------------------------------


class Network:
  """A model's inference pass, jitted on one device: a batch of segments -> per-segment
  `scoring.PROBABILITIES` (sigmoid or softmax) and `scoring.EMBEDDING` (what the head reads),
  in one pass."""

  def __init__(self, config: ml_collections.ConfigDict, variables: dict[str, Any]):
    model = models.create_model(config.model, config.num_classes)
    label_type = config.label_type

    def forward(variables, batch):
      logits, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
      return {scoring.PROBABILITIES: models.probabilities(logits, label_type),
              scoring.EMBEDDING: state["intermediates"][models.EMBEDDING][0]}

    self._forward = jax.jit(forward)
    self.config, self.model = config, model
    # One device: checkpoints load replicated over all of them, which would run every
    # batch on each.
    self.variables = jax.device_put(
        {"params": variables["params"], "batch_stats": variables["batch_stats"]},
        jax.local_devices()[0],
    )

  def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
    return jax.device_get(self._forward(self.variables, batch))

  def cut_for(self, hop: int) -> tuple[int, str]:
    """The block a stream at `hop` can reuse (`incremental`); (0, why) if none.

    Blocks with Squeeze-Excitation gates and input RMS normalisation read the whole window,
    and 'same' front padding shifts the frames of a piece: none of those can be cut.
    """
    m = self.config.model
    if m.block not in REUSABLE_BLOCKS:
      return 0, f"{m.block} blocks have Squeeze-Excitation gates, which read the whole window"
    if float(self.config.normalize_rms) > 0:
      return 0, "input RMS normalisation reads the whole window"
    if m.front_padding != "valid":
      return 0, "'same' front padding shifts a piece's frames"
    deepest = models.deepest_cut_block(int(m.num_blocks), bool(m.multi))
    return incremental.deepest_cut(hop, range(1, deepest + 1))

  def split(self, block: int) -> JaxSplit:
    """This model cut at block `block`'s output."""
    return JaxSplit(self, block)


REUSABLE_BLOCKS = ("basic", "res1", "res2")  # Blocks without a gate over the whole window.


class JaxSplit:
  """A JAX model cut at block k (`incremental.Split`): the front conv and blocks 1-k on a
  piece of a stream, then the blocks after k and the head on a whole window's block-k output.
  """

  def __init__(self, network: Network, block: int):
    model, label_type = network.model, network.config.label_type
    self.variables = network.variables
    self._front = jax.jit(lambda v, x: model.apply(v, x, num_layers=block + 1)[-1])
    self._back = jax.jit(lambda v, f: models.probabilities(
        model.apply(v, None, cut=(block, f)), label_type))

  def front(self, samples: np.ndarray) -> np.ndarray:
    """Block k's output `(channels, frames)` of mono float32 `samples`."""
    return np.asarray(jax.device_get(self._front(self.variables, samples[None])))[0].T

  def back(self, features: np.ndarray) -> np.ndarray:
    """Class scores `(classes,)` of a whole window's block-k output `(channels, frames)`."""
    return np.asarray(jax.device_get(self._back(self.variables, features.T[None])))[0]


# --- The predictor --------------------------------------------------------------------------


class Predictor(scoring.ClipScorer):
  """A trained JAX model ready for inference on arrays and files (see the module docstring).

  Build it with `Predictor.from_workdir(workdir)`; then `predict_waveform` / `predict_batch`
  score arrays, `predict_files` scores audio files, `embed` gives clip embeddings and
  `timeline` class scores over time; `iter_files` does all three in one pass over files
  (`scoring.ClipScorer`, which the exported ONNX model's predictor shares).
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      variables: dict[str, Any],
      labels: LabelInfo,
      *,
      batch_size: int | None = None,
      num_segments: int | str | None = None,
  ):
    """`batch_size` is segments per forward pass (default: config.eval_batch_size);
    `num_segments` per clip is an int, "cover" (the whole clip, ceil(length / input_size)
    segments) or None for config.eval_segments."""
    if len(labels.vocabulary) != config.num_classes:
      raise ValueError(
          f"{len(labels.vocabulary)} class names for {config.num_classes} model outputs."
      )
    self.config = config
    super().__init__(
        Network(config, variables), scoring.ClipInputs.from_config(config, num_segments),
        labels, batch_size=batch_size or config.eval_batch_size,
        threshold=config.f_score_threshold,
    )

  @classmethod
  def from_workdir(
      cls,
      workdir: str | os.PathLike,
      which: str = "best",
      *,
      config: ml_collections.ConfigDict | str | None = None,
      labels: LabelInfo | str | None = None,
      batch_size: int | None = None,
      num_segments: int | str | None = None,
  ) -> Predictor:
    """Loads the best (or latest) checkpoint of a training workdir.

    `config` defaults to the workdir's config.json (a ConfigDict or a config file spec
    overrides it, see `workdir_files.read_config`); `labels` to `load_labels` (a LabelInfo or a
    labels/manifest JSON path).
    """
    if not Path(workdir).is_dir():
      raise FileNotFoundError(f"Workdir {workdir} does not exist.")
    if not isinstance(config, ml_collections.ConfigDict):
      config = workdir_files.read_config(workdir, config)
    if not isinstance(labels, LabelInfo):
      labels = load_labels(workdir, config, labels)
    loaded = checkpointing.read_checkpoint(workdir, config, which)  # Falls back if damaged.
    predictor = cls(config, loaded.variables, labels, batch_size=batch_size,
                    num_segments=num_segments)
    predictor.checkpoint_note = loaded.note
    return predictor
