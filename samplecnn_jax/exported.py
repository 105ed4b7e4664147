"""An exported ONNX model: the facts it carries (`ExportInfo`) and its predictor, without JAX.

`export.py` writes `FILE.onnx` with an `ExportInfo` in its `metadata_props`; this module reads
it back and scores audio through onnxruntime:

  from samplecnn_jax.exported import OnnxPredictor

  predictor = OnnxPredictor.from_file("demo.onnx")
  scores = predictor.predict_waveform(waveform, sample_rate)     # (num_classes,)
  records = predictor.predict_files(["a.wav", "b.flac"])         # as Predictor's

`OnnxPredictor` is a `scoring.ClipScorer`: files are decoded, cut into segments, batched and
reported exactly as `inference.Predictor` does; only the network differs (the input scaling
is inside the graph, so the segments reach it unscaled). This module imports neither JAX nor
Flax (`predict --model` runs where they are not installed); onnxruntime is the `export`
extra, imported when a model is loaded. It builds no graphs (`onnx_graph.py`, `export.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping

import numpy as np

from samplecnn_jax import scoring, segments
from samplecnn_jax.workdir_files import LabelInfo

INPUT = "waveform"  # The graph's input: float32 [batch, input_size] raw samples.
SCORES = "scores"  # Output: [batch, num_classes] probabilities (sigmoid or softmax).
EMBEDDING = "embedding"  # Output: [batch, D] what the head reads (the clip embedding).
FORMAT = "samplecnn_jax.export/1"  # metadata_props["format"] of the files this module reads.
INSTALL = 'pip install -e ".[export]"'  # What installs onnx and onnxruntime.


def segment_rule(num_segments: int, input_size: int, sample_rate: int,
                 pooling: str = "mean") -> str:
  """The rule that turns a clip into the graph's inputs, in words (metadata `segment_rule`)."""
  combine = ("average their scores" if pooling == "mean" else
             "average their scores weighted by each window's RMS (floored at "
             f"{segments.RMS_FLOOR:g}), computed before the graph scales them")
  return (
      f"Decode to mono float32 in [-1, 1] at {sample_rate} Hz. Cut {num_segments} windows of "
      f"{input_size} samples whose starts are round(i * (N - {input_size}) / "
      f"{max(num_segments - 1, 1)}) for i = 0..{num_segments - 1} (N = the clip's length; a clip "
      f"shorter than {input_size} samples is zero-padded at its end and every start is 0). "
      f"Feed the windows unscaled (the graph scales them) and {combine}."
  )


@dataclasses.dataclass(frozen=True)
class ExportInfo:
  """What an exported model carries besides its graph (`metadata_props`, all strings)."""

  labels: LabelInfo  # Class names of the outputs; label_type (sigmoid or softmax).
  sample_rate: int  # Hz of the waveform input.
  input_size: int  # Samples per window (the input's second dimension).
  num_segments: int  # Windows per clip (config.eval_segments), see `segment_rule`.
  threshold: float  # Default decision threshold (config.f_score_threshold).
  batch_size: int  # Default windows per forward pass (config.eval_batch_size).
  scaling: segments.InputScaling  # Applied inside the graph; recorded for readers.
  source: str = ""  # The workdir and checkpoint exported.
  quantization: str = "float32"  # Or "int8".
  pooling: str = "mean"  # How a clip's window scores combine (config.segment_pooling).

  @property
  def label_type(self) -> str:
    return self.labels.label_type

  def to_metadata(self) -> dict[str, str]:
    """The `metadata_props` of the ONNX file."""
    scaling = dataclasses.asdict(self.scaling) | {"rms_floor": segments.RMS_FLOOR}
    return {
        "format": FORMAT,
        "labels": json.dumps(self.labels.to_json()),
        "label_type": self.label_type,
        "sample_rate": str(self.sample_rate),
        "input_size": str(self.input_size),
        "num_segments": str(self.num_segments),
        "threshold": repr(self.threshold),
        "batch_size": str(self.batch_size),
        "input_scaling": json.dumps(scaling),
        "segment_pooling": self.pooling,
        "segment_rule": segment_rule(self.num_segments, self.input_size, self.sample_rate,
                                     self.pooling),
        "source": self.source,
        "quantization": self.quantization,
    }

  @classmethod
  def from_metadata(cls, props: Mapping[str, str], source: str = "") -> ExportInfo:
    """From `metadata_props`; a file `export.py` did not write is refused in one line."""
    if props.get("format") != FORMAT:
      raise ValueError(
          f"{source or 'the model'} is not a samplecnn_jax export (metadata format "
          f"{props.get('format')!r}, expected {FORMAT!r}): export it with "
          f"`python -m samplecnn_jax.export --workdir=DIR --out=FILE.onnx`."
      )
    scaling = json.loads(props["input_scaling"])
    scaling.pop("rms_floor", None)
    return cls(
        labels=LabelInfo.from_json(json.loads(props["labels"]), source),
        sample_rate=int(props["sample_rate"]),
        input_size=int(props["input_size"]),
        num_segments=int(props["num_segments"]),
        threshold=float(props["threshold"]),
        batch_size=int(props["batch_size"]),
        scaling=segments.InputScaling(**scaling),
        source=props.get("source", ""),
        quantization=props.get("quantization", "float32"),
        pooling=props.get("segment_pooling", "mean"),
    )


def _import_onnxruntime():
  """onnxruntime, or an ImportError that names the extra to install."""
  try:
    import onnxruntime  # The optional `export` extra; predict --workdir never needs it.
  except ImportError as e:
    raise ImportError(f"ONNX models need onnxruntime: {INSTALL}") from e
  return onnxruntime


class OnnxNetwork:
  """An onnxruntime session as a `scoring.Network`: a batch -> scores and embeddings."""

  def __init__(self, model: str | os.PathLike | bytes, num_threads: int | None = None):
    """`model` is an ONNX file, or its bytes."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    if num_threads:
      options.intra_op_num_threads = num_threads
    model = model if isinstance(model, bytes) else os.fspath(model)
    self.model, self.num_threads = model, num_threads
    self.session = ort.InferenceSession(model, options,
                                        providers=["CPUExecutionProvider"])
    self.outputs = [output.name for output in self.session.get_outputs()]

  @functools.cached_property
  def graph(self):
    """The `onnx.ModelProto` this session runs, read and parsed once (for `incremental`)."""
    import onnx

    return onnx.load(self.model) if isinstance(self.model, str) else onnx.load_from_string(
        self.model)

  def cut_for(self, hop: int) -> tuple[int, str]:
    """The block a stream at `hop` can reuse (`incremental.onnx_cut`); (0, why) if none."""
    from samplecnn_jax import incremental

    return incremental.onnx_cut(self.graph, hop)

  def split(self, block: int):
    """This model cut at block `block`'s output (`incremental.OnnxSplit`)."""
    from samplecnn_jax import incremental, onnx_graph

    return incremental.OnnxSplit(self.graph, onnx_graph.block_output(block), self.num_threads)

  @property
  def metadata(self) -> dict[str, str]:
    return dict(self.session.get_modelmeta().custom_metadata_map)

  def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
    values = self.session.run(None, {INPUT: np.ascontiguousarray(batch, np.float32)})
    named = dict(zip(self.outputs, values, strict=True))
    result = {scoring.PROBABILITIES: named[SCORES]}
    if EMBEDDING in named:
      result[scoring.EMBEDDING] = named[EMBEDDING]
    return result


class OnnxPredictor(scoring.ClipScorer):
  """An exported model ready for inference on arrays and files (see the module docstring)."""

  def __init__(
      self,
      network: OnnxNetwork,
      info: ExportInfo,
      *,
      batch_size: int | None = None,
      num_segments: int | str | None = None,
  ):
    """`batch_size` windows per forward pass (default: the run's eval_batch_size);
    `num_segments` per clip an int, "cover" or None for the run's eval_segments."""
    count = info.num_segments if num_segments is None else num_segments
    # The graph scales its inputs: the segments go in as decoded.
    inputs = scoring.ClipInputs(info.sample_rate, info.input_size, count,
                                segments.InputScaling(False, 0.0, 1.0), info.pooling)
    super().__init__(network, inputs, info.labels, batch_size=batch_size or info.batch_size,
                     threshold=info.threshold)
    self.info = info

  @classmethod
  def from_file(
      cls,
      path: str | os.PathLike,
      *,
      batch_size: int | None = None,
      num_segments: int | str | None = None,
      num_threads: int | None = None,
  ) -> OnnxPredictor:
    """Loads `FILE.onnx` written by `export.py`; `num_threads` bounds onnxruntime's threads."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No model file {path}: export one with "
                              f"`python -m samplecnn_jax.export --workdir=DIR --out={path}`.")
    network = OnnxNetwork(path, num_threads)
    info = ExportInfo.from_metadata(network.metadata, os.fspath(path))
    return cls(network, info, batch_size=batch_size, num_segments=num_segments)

