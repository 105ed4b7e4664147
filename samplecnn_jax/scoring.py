"""How a trained model scores clips, arrays and files, whatever runs the network: no JAX here.

The `ClipScorer` engine turns audio into model inputs, runs any `network` (a callable that maps
a `(rows, input_size)` float32 batch to per-row `PROBABILITIES` and, when it has them,
`EMBEDDING`s) in fixed-shape batches, and gathers the results. Two networks use it:
`inference.Predictor` (the JAX model of a training workdir) and `exported.OnnxPredictor` (an
exported ONNX graph through onnxruntime), so both score a clip the same way:

- `ClipInputs`: the run's segment rule and input scaling, applied to waveforms and files
  (`segments.py` holds the rules themselves);
- `stream_batches`: the one batching engine: segments of many clips (or of the chunks of a
  long file) share fixed-shape batches, so a folder costs one compile;
- `ClipScorer.iter_files`: every file opened and decoded once for everything asked of it
  (scores, embedding, timeline), `DEFAULT_THREADS` files read ahead while the model runs;
- `describe_scores` / `file_record`: the readable record of a clip's scores.

This module imports numpy, audio decoding, the segment rules and the labels record
(`workdir_files.LabelInfo`) only, never JAX or Flax (a deployed model scores files without
them; a test checks it). It loads no model, parses no
arguments, prints nothing and writes no files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from samplecnn_jax import audio, segments
from samplecnn_jax.segments import WINDOWS_PER_READ
from samplecnn_jax.workdir_files import LabelInfo

DEFAULT_TOP_K = 5
DEFAULT_THREADS = 4  # Files decoded (and resampled) in parallel with the forward pass.
PROBABILITIES = "probabilities"  # Network output: per-segment class probabilities.
EMBEDDING = "embedding"  # Network output: per-segment features the head reads.
Network = Callable[[np.ndarray], dict[str, np.ndarray]]  # A batch -> per-row outputs.


# --- How a run turns a clip into model inputs ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClipInputs:
  """The segment rule and input scaling of a run, applied to waveforms and to files."""

  sample_rate: int
  input_size: int
  num_segments: int | str  # Per clip: an int >= 1, or segments.COVER (the whole clip).
  scaling: segments.InputScaling
  pooling: str = "mean"  # How the segment scores combine (segments.POOLINGS).

  def __post_init__(self):
    count = self.num_segments
    if count != segments.COVER and not (isinstance(count, int) and count >= 1):
      raise ValueError(f"num_segments must be an int >= 1 or {segments.COVER!r}, got {count!r}.")
    segments.check_pooling(self.pooling)

  @classmethod
  def from_config(cls, config: Any, num_segments: int | str | None = None) -> ClipInputs:
    """As in evaluation; `num_segments` (an int or "cover") overrides config.eval_segments."""
    count = config.eval_segments if num_segments is None else num_segments
    return cls(int(config.sample_rate), int(config.input_size), count,
               segments.InputScaling.from_config(config), config.segment_pooling)

  def clip_starts(self, num_samples: int) -> np.ndarray:
    """Start samples of the segments that score a clip of `num_samples` samples."""
    count = self.num_segments
    if count == segments.COVER:
      count = segments.cover_count(num_samples, self.input_size)
    return segments.segment_starts(num_samples, self.input_size, count)

  def from_mono(self, mono: np.ndarray) -> np.ndarray:
    """The `(k, input_size)` float32 model inputs of a mono clip at `sample_rate`."""
    return self.weighted_from_mono(mono)[0]

  def weighted_from_mono(self, mono: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`from_mono`'s inputs and each one's weight in the clip's score (`segment_weights`)."""
    count = self.num_segments
    if count == segments.COVER:
      count = segments.cover_count(len(mono), self.input_size)
    windows = segments.segment_clip(mono, self.input_size, count).astype(np.float32)
    weights = segments.segment_weights(windows, self.pooling)
    return self.scaling(windows), weights

  def from_waveform(self, waveform: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """`weighted_from_mono` of a 1-D or 2-D waveform at any `sample_rate` (`to_mono_float`)."""
    if sample_rate <= 0:
      raise ValueError(f"sample_rate must be > 0, got {sample_rate}.")
    mono = audio.resample(to_mono_float(waveform), int(sample_rate), self.sample_rate)
    return self.weighted_from_mono(mono)


def to_mono_float(waveform: np.ndarray) -> np.ndarray:
  """1-D float32 audio from a 1-D or 2-D array, either (frames, channels) or (channels, frames).

  The shorter axis of a 2-D array is taken as the channels (soundfile reads (frames,
  channels), librosa (channels, frames)); integer PCM is scaled to [-1, 1).
  """
  array = np.asarray(waveform)
  if array.ndim not in (1, 2) or array.size == 0:
    raise ValueError(f"Expected a non-empty 1-D or 2-D waveform, got shape {array.shape}.")
  array = audio.to_float32(array)
  if array.ndim == 2 and array.shape[0] < array.shape[1]:
    array = array.T
  mono = audio.mix_to_mono(array)
  if not np.isfinite(mono).all():
    raise ValueError("The waveform contains NaN or infinite samples.")
  return mono


# --- The batching engine --------------------------------------------------------------------


@dataclasses.dataclass
class _Request:
  """A request whose segments are (partly) in flight; complete when `remaining` is 0."""

  key: Any
  remaining: int
  parts: list = dataclasses.field(default_factory=list)


def _rows(outputs: Any, start: int, stop: int) -> Any:
  if isinstance(outputs, dict):
    return {name: rows[start:stop] for name, rows in outputs.items()}
  return outputs[start:stop]


def _concatenate(parts: list) -> Any:
  if len(parts) <= 1:
    return parts[0] if parts else None
  if isinstance(parts[0], dict):
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
  return np.concatenate(parts)


def stream_batches(
    requests: Iterable[tuple[Any, np.ndarray | None]],
    run_batch: Callable[[np.ndarray], Any],
    batch_size: int,
    input_size: int,
) -> Iterator[tuple[Any, Any]]:
  """(key, segments (k, input_size) or None) in -> (key, their k output rows or None) out, in
  input order.

  Segments are packed into fixed `(batch_size, input_size)` batches regardless of which
  request they come from (one compile for any mix of clips); the last batch is zero-padded.
  When every segment fits in one batch, that batch is cut to the next power of two rows
  instead (a few short files then cost a small forward pass, not a full padded batch).
  `run_batch` maps a batch to per-row outputs: an array, or a dict of arrays, whose first
  axis is the batch row; a request gets the rows of its segments, in order.
  """
  batch = np.zeros((batch_size, input_size), np.float32)
  owners: list[_Request] = []
  queue: collections.deque[_Request] = collections.deque()
  ran_full_batch = False  # After one full batch, the last one is padded to the same shape.

  def run():
    nonlocal ran_full_batch
    rows = batch_size if ran_full_batch else min(batch_size, 1 << (len(owners) - 1).bit_length())
    ran_full_batch = rows == batch_size
    outputs = run_batch(batch[:rows])
    first = 0
    while first < len(owners):  # The rows of one request are consecutive.
      request, stop = owners[first], first + 1
      while stop < len(owners) and owners[stop] is request:
        stop += 1
      request.parts.append(_rows(outputs, first, stop))
      request.remaining -= stop - first
      first = stop
    owners.clear()
    batch[:] = 0.0

  def finished():
    while queue and queue[0].remaining == 0:
      request = queue.popleft()
      yield request.key, _concatenate(request.parts)

  for key, inputs in requests:
    request = _Request(key, 0 if inputs is None else len(inputs))
    queue.append(request)
    for segment in () if inputs is None else inputs:
      batch[len(owners)] = segment
      owners.append(request)
      if len(owners) == batch_size:
        run()
    yield from finished()
  if owners:
    run()
  yield from finished()


# --- Files ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileResult:
  """Everything asked of one file. On failure `error` ("kind: reason") and `exception` are
  set and the arrays are None."""

  path: str | os.PathLike
  error: str | None = None
  exception: Exception | None = None
  duration_s: float | None = None
  num_segments: int = 0
  scores: np.ndarray | None = None  # (num_classes,) clip scores.
  embedding: np.ndarray | None = None  # (D,) mean of the clip segments' embeddings, if asked.
  timeline: dict[str, np.ndarray] | None = None  # start, end (T,) s; scores (T, classes).


def _error_text(error: Exception) -> str:
  if isinstance(error, audio.AudioError):
    return f"{error.kind}: {error.reason}"
  return f"failed: {type(error).__name__}: {error}"


class _FileJob:
  """One file: the windows it is scored on (clip segments, then timeline segments), read in
  blocks (`segments.read_windows`), and the network outputs gathered for them."""

  def __init__(self, path, inputs: ClipInputs, hop: int | None, embedding: bool,
               max_windows: int):
    self.path, self.inputs, self.hop, self.embedding = path, inputs, hop, embedding
    self.max_windows = max_windows
    self.error: Exception | None = None
    self.duration_s: float | None = None
    self.num_clip = 0
    self.timeline_starts = self.starts = np.zeros((0,), np.int64)
    self.blocks: Iterable[tuple[np.ndarray, np.ndarray]] = ()
    self._outputs: dict[str, np.ndarray] = {}
    self.weights = np.zeros((0,), np.float32)  # Of the clip segments, filled as they are read.

  def open(self) -> _FileJob:
    """Opens the file and plans its windows; reads them all now unless there is a timeline
    (then they are read block by block as the model takes them). Never raises: a file that
    cannot be read records its error."""
    try:
      file = audio.AudioFile(self.path)
    except Exception as e:  # A file must not stop the run, whatever the decoder raises.
      self.error = e
      return self
    length = file.num_samples(self.inputs.sample_rate)
    self.duration_s = round(file.seconds, 3)
    clip = self.inputs.clip_starts(length)
    self.num_clip = len(clip)
    self.weights = np.ones((self.num_clip,), np.float32)
    if self.hop:
      self.timeline_starts = segments.hop_starts(length, self.inputs.input_size, self.hop)
    self.starts = np.concatenate([clip, self.timeline_starts])
    self.blocks = self._read(file)
    if not self.hop:
      self.blocks = list(self.blocks)
      if self.error is not None:
        self.blocks = []
    return self

  def _read(self, file: audio.AudioFile) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    inputs = self.inputs
    try:
      with file:
        for indices, windows in segments.read_windows(
            file, self.starts, inputs.input_size, inputs.sample_rate, self.max_windows):
          clip = indices < self.num_clip
          self.weights[indices[clip]] = segments.segment_weights(windows[clip], inputs.pooling)
          yield indices, inputs.scaling(windows)
    except Exception as e:  # Recorded; the windows read so far are then ignored.
      self.error = e

  def add(self, indices: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """Keeps the network outputs of the windows `indices` (all probabilities; embeddings of
    clip segments, when asked)."""
    if not self._outputs:
      self._outputs[PROBABILITIES] = np.zeros(
          (len(self.starts), outputs[PROBABILITIES].shape[-1]), np.float32)
      if self.embedding:
        self._outputs[EMBEDDING] = np.zeros(
            (self.num_clip, outputs[EMBEDDING].shape[-1]), np.float32)
    self._outputs[PROBABILITIES][indices] = outputs[PROBABILITIES]
    if self.embedding:
      clip = indices < self.num_clip
      self._outputs[EMBEDDING][indices[clip]] = outputs[EMBEDDING][clip]

  def result(self) -> FileResult:
    if self.error is not None:
      return FileResult(self.path, _error_text(self.error), self.error)
    probabilities = self._outputs[PROBABILITIES]
    result = FileResult(self.path, duration_s=self.duration_s, num_segments=self.num_clip,
                        scores=segments.pool_segments(probabilities[: self.num_clip],
                                                      self.weights))
    if self.embedding:
      embedding = self._outputs[EMBEDDING].mean(axis=0).astype(np.float32)
      result = dataclasses.replace(result, embedding=embedding)
    if self.hop:
      rate, size = self.inputs.sample_rate, self.inputs.input_size
      start = self.timeline_starts / rate
      timeline = {"start": start, "end": start + size / rate,
                  "scores": probabilities[self.num_clip :].astype(np.float32)}
      result = dataclasses.replace(result, timeline=timeline)
    return result


def _map_ahead(fn: Callable, items: Sequence, num_threads: int) -> Iterator[Any]:
  """fn(item) for each item, in order, computed by `num_threads` threads at most 2x that far
  ahead. The bound keeps memory flat on large folders (decoded audio waits for the model)."""
  if num_threads <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending: collections.deque = collections.deque()
    iterator = iter(items)
    for item in iterator:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * num_threads:
        break
    while pending:
      future = pending.popleft()
      for next_item in iterator:
        pending.append(pool.submit(fn, next_item))
        break
      yield future.result()


# --- The scorer ----------------------------------------------------------------------------


class ClipScorer:
  """A model ready for inference on arrays and files, whatever runs its `network`.

  `predict_waveform` / `predict_batch` score arrays, `predict_files` scores audio files,
  `embed` gives clip embeddings and `timeline` class scores over time; `iter_files` does all
  three in one pass over files. `inference.Predictor` (JAX) and `exported.OnnxPredictor`
  (onnxruntime) build one from a workdir or an exported file.
  """

  # Why another checkpoint than the one asked for was loaded (a damaged best), else None.
  checkpoint_note: str | None = None

  def __init__(
      self,
      network: Network,
      inputs: ClipInputs,
      labels: LabelInfo,
      *,
      batch_size: int,
      threshold: float,
  ):
    """`network` maps a batch of `inputs`-made segments to per-row outputs; `labels` names the
    run's classes; `batch_size` is segments per forward pass; `threshold`
    the default of `describe` (the run's f_score_threshold)."""
    self.batch_size = int(batch_size)
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    self.network = network
    self.inputs = inputs
    self.labels = labels
    self.threshold = float(threshold)

  @property
  def num_classes(self) -> int:
    return len(self.labels.vocabulary)

  @property
  def sample_rate(self) -> int:
    return self.inputs.sample_rate

  @property
  def input_size(self) -> int:
    return self.inputs.input_size

  @property
  def num_segments(self) -> int | str:
    return self.inputs.num_segments

  def segments(self, mono: np.ndarray) -> np.ndarray:
    """The `(k, input_size)` float32 model inputs of a mono clip at `self.sample_rate`."""
    return self.inputs.from_mono(mono)

  def _stream(self, requests: Iterable[tuple[Any, np.ndarray | None]]) -> Iterator[tuple]:
    """`stream_batches` with this model's network and batch shape."""
    return stream_batches(requests, self.network, self.batch_size, self.input_size)

  # --- Arrays ---

  def predict_batch(
      self, waveforms: Sequence[np.ndarray], sample_rate: int | Sequence[int]
  ) -> np.ndarray:
    """Clip scores `(len(waveforms), num_classes)` of waveforms at `sample_rate` (one, or one each).

    Each waveform is 1-D, or 2-D with a channel axis (mixed to mono); any length, any rate.
    """
    rates = [sample_rate] * len(waveforms) if np.isscalar(sample_rate) else list(sample_rate)
    if len(rates) != len(waveforms):
      raise ValueError(f"{len(rates)} sample rates for {len(waveforms)} waveforms.")
    pairs = enumerate(zip(waveforms, rates, strict=True))
    weights = {}

    def requests():
      for i, (waveform, rate) in pairs:
        inputs, weights[i] = self.inputs.from_waveform(waveform, rate)
        yield i, inputs

    scores = [segments.pool_segments(out[PROBABILITIES], weights.pop(i))
              for i, out in self._stream(requests())]
    return np.stack(scores) if scores else np.zeros((0, self.num_classes), np.float32)

  def predict_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Clip scores `(num_classes,)` of one waveform (see `predict_batch`)."""
    return self.predict_batch([waveform], sample_rate)[0]

  # --- Files ---

  def load_segments(self, path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decodes a file (any rate, channels, length) to model inputs; returns (segments, seconds).

    Only the frames the segments cover are decoded. Raises `audio.AudioError` for files
    that cannot be decoded.
    """
    count = None if self.num_segments == segments.COVER else self.num_segments
    return segments.read_segments(path, self.sample_rate, self.input_size, count,
                                  self.inputs.scaling)

  def iter_files(
      self,
      paths: Sequence[str | os.PathLike],
      *,
      embeddings: bool = False,
      hop_seconds: float | None = None,
      num_threads: int = DEFAULT_THREADS,
      chunk_segments: int = WINDOWS_PER_READ,
  ) -> Iterator[FileResult]:
    """One `FileResult` per path, yielded in order as each is ready: clip scores, and the
    embedding (`embeddings`) and timeline (segments every `hop_seconds`) when asked.

    Each file is opened once and each of its frames decoded about once for everything
    asked: the timeline's windows and the clip segments are cut from the same reads, at
    most `chunk_segments` windows at a time, so a long recording costs the memory of a
    short one. Files are opened (and, without a timeline, decoded) by `num_threads`
    threads while the model runs. A file that cannot be read gets `error` and the others
    go on.
    """
    hop = None
    if hop_seconds is not None:
      if hop_seconds <= 0:
        raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}.")
      hop = max(1, round(hop_seconds * self.sample_rate))

    def open_file(path) -> _FileJob:
      return _FileJob(path, self.inputs, hop, embeddings, chunk_segments).open()

    def requests():
      for job in _map_ahead(open_file, paths, num_threads):
        for indices, windows in job.blocks:
          yield (job, indices), windows
        yield (job, None), None  # The job is complete once this comes out.

    for (job, indices), outputs in self._stream(requests()):
      if indices is None:
        yield job.result()
      elif job.error is None:
        job.add(indices, outputs)

  def iter_predict_files(
      self,
      paths: Sequence[str | os.PathLike],
      *,
      top_k: int = DEFAULT_TOP_K,
      threshold: float | None = None,
      num_threads: int = DEFAULT_THREADS,
  ) -> Iterator[dict[str, Any]]:
    """One result record per path, yielded in order as each is ready (see `file_record`).

    A file that cannot be read gets `error` ("kind: reason") and empty scores; the others
    go on. `top_k` and `threshold` as in `describe`.
    """
    threshold = self.threshold if threshold is None else threshold
    for result in self.iter_files(paths, num_threads=num_threads):
      yield file_record(result, self.labels, top_k, threshold)

  def predict_files(self, paths: Sequence[str | os.PathLike], **options: Any) -> list[dict]:
    """One result record per path, in order; takes `iter_predict_files`'s options."""
    return list(self.iter_predict_files(paths, **options))

  def embed(
      self, paths: Sequence[str | os.PathLike], num_threads: int = DEFAULT_THREADS
  ) -> tuple[np.ndarray, list[str], list[dict]]:
    """Clip embeddings of audio files: `(embeddings (files, D) float32, paths, failures)`.

    A file's embedding is the mean over its segments (the `segments` setting, as for scores)
    of what the head reads (`models.EMBEDDING`: the pooled trunk features). Files that
    cannot be decoded are left out and listed in `failures` as {"path", "error"}.
    """
    return embedding_table(self.iter_files(paths, embeddings=True, num_threads=num_threads))

  def timeline(
      self, path: str | os.PathLike, hop_seconds: float,
      chunk_segments: int = WINDOWS_PER_READ,
  ) -> dict[str, np.ndarray]:
    """Class scores over time of one file: segments every `hop_seconds`, streamed.

    Returns {"start", "end"} (seconds, `(T,)`) and "scores" `(T, num_classes)`. Only
    `chunk_segments` segments are decoded at a time, so a long recording costs what a short
    one does. Raises `audio.AudioError` for files that cannot be decoded.
    """
    [result] = self.iter_files([path], hop_seconds=hop_seconds, num_threads=1,
                               chunk_segments=chunk_segments)
    if result.exception is not None:
      raise result.exception
    return result.timeline

  def describe(
      self, scores: np.ndarray, top_k: int = DEFAULT_TOP_K, threshold: float | None = None
  ) -> dict[str, Any]:
    """`describe_scores` with this run's labels; `threshold` defaults to the run's."""
    threshold = self.threshold if threshold is None else threshold
    return describe_scores(scores, self.labels, top_k, threshold)


# --- Result records -------------------------------------------------------------------------


def describe_scores(
    scores: np.ndarray, labels: LabelInfo, top_k: int, threshold: float
) -> dict[str, Any]:
  """Readable view of clip scores: per-class scores, the top k, and classes >= threshold.

  With an eval label map (Speech Commands) `eval_label` is the scoring class of the best
  output, as the accuracy metric counts it.
  """
  names = labels.vocabulary
  order = np.argsort(-scores, kind="stable")
  result = {
      "scores": {name: float(score) for name, score in zip(names, scores, strict=True)},
      "top_k": [{"label": names[i], "score": float(scores[i])} for i in order[:top_k]],
      "above_threshold": [names[i] for i in order if scores[i] >= threshold],
  }
  if labels.eval_label_map is not None:
    result["eval_label"] = labels.eval_vocabulary[labels.eval_label_map[order[0]]]
  return result


def file_record(
    result: FileResult, labels: LabelInfo, top_k: int, threshold: float
) -> dict[str, Any]:
  """The record of one file: file, error, duration_s, num_segments, then `describe_scores`'s
  fields (empty when the file could not be decoded). See docs/predict.md."""
  scores = result.scores
  record = {"file": str(result.path), "error": result.error, "duration_s": result.duration_s,
            "num_segments": 0 if scores is None else result.num_segments}
  if scores is not None and not np.isfinite(scores).all():
    # A NaN score is no result: report the file as failed (strict JSON has no NaN).
    record["error"] = "invalid: the model gave non-finite scores (NaN/Inf) for this file"
    scores = None
  if scores is not None:
    return record | describe_scores(scores, labels, top_k, threshold)
  record.update(scores={}, top_k=[], above_threshold=[])
  if labels.eval_label_map is not None:
    record["eval_label"] = None
  return record


def embedding_table(results: Iterable[FileResult]) -> tuple[np.ndarray, list[str], list[dict]]:
  """`(embeddings (files, D) float32, paths, failures)` of the files whose embedding exists
  and is finite; the others are listed in `failures` as {"path", "error"}."""
  rows, kept, failures = [], [], []
  for result in results:
    if result.error is not None:
      failures.append({"path": str(result.path), "error": result.error})
    elif not np.isfinite(result.embedding).all():
      failures.append({"path": str(result.path), "error": "non-finite embedding"})
    else:
      rows.append(result.embedding)
      kept.append(str(result.path))
  width = rows[0].shape[-1] if rows else 0
  return (np.stack(rows) if rows else np.zeros((0, width), np.float32)), kept, failures
