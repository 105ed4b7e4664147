"""Prediction with a trained workdir: clip-level scores for audio files and arrays.

  python -m samplecnn_jax.predict --workdir=DIR FILE_OR_FOLDER [...] [--output=out.json|out.csv]

From Python (load the model once, call it many times):

  predictor = Predictor.from_workdir("workdirs/dcase")
  scores = predictor.predict_waveform(waveform, sample_rate)     # (num_classes,)
  results = predictor.predict_files(["a.wav", "b.flac"])         # one dict per file

A clip is scored as in evaluation: decoded to mono at the run's sample rate, cut into
`config.eval_segments` evenly spread segments of `config.input_size` samples (short clips
zero-padded, `input_pipeline.segment_clip`), standardised when the run standardised, and the
segment probabilities (sigmoid or softmax) averaged. Segments of many files share one
fixed-shape jitted forward pass, so a folder costs one compile. A file that cannot be decoded
is reported with its error and the others go on. See docs/predict.md.

This module does not train, evaluate against labels or read the prepared store's audio (it
only reads the store's manifest when the workdir has no `labels.json`).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from samplecnn_jax import audio, checkpointing, cli, input_pipeline, models, store
from samplecnn_jax import workdir as workdir_files

LABELS_FILE = workdir_files.LABELS_FILE  # Label vocabulary of a run, beside its config.json.
DEFAULT_TOP_K = 5
DEFAULT_THREADS = 4  # Files decoded (and resampled) in parallel with the forward pass.
PROGRESS_MIN_FILES = 10  # A progress bar appears from this many files on (when not disabled).
COVER = "cover"  # Segment mode: enough segments to cover the whole clip.
OUTPUT_FORMATS = ("table", "json", "csv")


# --- Labels and config ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelInfo:
  """Class names of a run's outputs and, for Speech Commands, the coarser scoring classes."""

  vocabulary: tuple[str, ...]  # Name of output unit i.
  label_type: str  # multi_label (sigmoid) | multi_class (softmax).
  eval_vocabulary: tuple[str, ...] | None = None  # Scoring classes (12 for Speech Commands).
  eval_label_map: tuple[int, ...] | None = None  # Output unit -> index into eval_vocabulary.
  source: str = ""  # Where the names came from (a path, or "numbered").

  @classmethod
  def from_dict(cls, data: dict[str, Any], source: str = "") -> LabelInfo:
    """From a labels.json or a store manifest (both have these keys)."""
    vocabulary = data.get("vocabulary")
    if not isinstance(vocabulary, list) or not vocabulary:
      raise ValueError(f"{source or 'labels'} has no 'vocabulary' list of class names.")
    eval_vocabulary = data.get("eval_vocabulary")
    eval_label_map = data.get("eval_label_map")
    if (eval_vocabulary is None) != (eval_label_map is None):
      raise ValueError(f"{source}: eval_vocabulary and eval_label_map go together.")
    if eval_label_map is not None:
      if len(eval_label_map) != len(vocabulary) or not all(
          isinstance(i, int) and 0 <= i < len(eval_vocabulary) for i in eval_label_map
      ):
        raise ValueError(
            f"{source}: eval_label_map must give, for each of the {len(vocabulary)} classes, "
            f"an index into the {len(eval_vocabulary)} eval_vocabulary names."
        )
    return cls(
        vocabulary=tuple(str(v) for v in vocabulary),
        label_type=str(data.get("label_type", "multi_label")),
        eval_vocabulary=None if eval_vocabulary is None else tuple(map(str, eval_vocabulary)),
        eval_label_map=None if eval_label_map is None else tuple(eval_label_map),
        source=source,
    )

  @classmethod
  def numbered(cls, num_classes: int, label_type: str) -> LabelInfo:
    """Names `class_0`, `class_1`, ... for a run whose vocabulary cannot be found."""
    return cls(tuple(f"class_{i}" for i in range(num_classes)), label_type, source="numbered")


def load_labels(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, path: str | None = None
) -> LabelInfo:
  """The class names of a run: `path`, else `workdir/labels.json`, else the store's manifest.

  The prepared store is often not on the machine that predicts, so training writes
  `labels.json` beside the checkpoints; older workdirs fall back to the manifest at
  `config.data_dir`, and, when that is absent too, to numbered names (with a warning).
  """
  data_dir = input_pipeline.data_dir_for(config)
  found = workdir_files.read_labels(workdir, data_dir, path)
  if found is None:
    logging.warning(
        "No %s in %s and no store manifest at %s: classes are named class_0..class_%d.",
        LABELS_FILE, workdir, Path(data_dir) / store.MANIFEST, config.num_classes - 1,
    )
    return LabelInfo.numbered(config.num_classes, config.label_type)
  labels = LabelInfo.from_dict(*found)
  if len(labels.vocabulary) != config.num_classes:
    raise ValueError(
        f"{labels.source} names {len(labels.vocabulary)} classes but the model has "
        f"config.num_classes={config.num_classes} outputs: they belong to different runs."
    )
  return labels


def load_config(workdir: str | os.PathLike, config_file: str | None = None):
  """The run config: `config_file` (`file.py[:arg]` or a config.json) or `workdir/config.json`
  (see `workdir.read_config`)."""
  return workdir_files.read_config(workdir, config_file)


# --- Waveforms and segments -----------------------------------------------------------------


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


@dataclasses.dataclass
class _OpenClip:
  """A clip whose segments are (partly) in flight; `result` is set when it is complete."""

  key: Any
  remaining: int
  rows: list = dataclasses.field(default_factory=list)
  result: Any = None


def score_segment_stream(
    items: Iterable[tuple[Any, np.ndarray | None]],
    score_batch: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    input_size: int,
) -> Iterator[tuple[Any, np.ndarray | None]]:
  """(key, segments or None) in -> (key, clip scores or None) out, in input order.

  Segments are packed into fixed `(batch_size, input_size)` batches regardless of which
  clip they come from (one compile for any mix of clips); the last batch is zero-padded.
  When every segment fits in one batch, that batch is cut to the next power of two rows
  instead (a few short files then cost a small forward pass, not a full padded batch).
  `score_batch` maps a batch to segment probabilities; a clip's scores are the mean of its
  segments', as in evaluation (`metrics.clip_level_scores`).
  """
  batch = np.zeros((batch_size, input_size), np.float32)
  owners: list[_OpenClip] = []
  queue: collections.deque[_OpenClip] = collections.deque()
  ran_full_batch = False  # After one full batch, the last one is padded to the same shape.

  def run_batch():
    nonlocal ran_full_batch
    rows = batch_size if ran_full_batch else min(batch_size, 1 << (len(owners) - 1).bit_length())
    ran_full_batch = rows == batch_size
    probs = score_batch(batch[:rows])
    for row, clip in enumerate(owners):
      clip.rows.append(probs[row])
      clip.remaining -= 1
      if clip.remaining == 0:
        clip.result = np.mean(clip.rows, axis=0, dtype=np.float64).astype(np.float32)
    owners.clear()
    batch[:] = 0.0

  def finished():
    while queue and queue[0].remaining == 0:
      clip = queue.popleft()
      yield clip.key, clip.result

  for key, segments in items:
    clip = _OpenClip(key, 0 if segments is None else len(segments))
    queue.append(clip)
    for segment in () if segments is None else segments:
      batch[len(owners)] = segment
      owners.append(clip)
      if len(owners) == batch_size:
        run_batch()
    yield from finished()
  if owners:
    run_batch()
  yield from finished()


# --- The predictor --------------------------------------------------------------------------


class Predictor:
  """A trained model ready for inference: one jitted forward pass over fixed segment batches.

  Build it with `Predictor.from_workdir(workdir)`; then `predict_waveform` / `predict_batch`
  score arrays and `predict_files` scores audio files, batching segments across files.
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
    self.labels = labels
    self.sample_rate = int(config.sample_rate)
    self.input_size = int(config.input_size)
    self.batch_size = int(batch_size or config.eval_batch_size)
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    self.num_segments = config.eval_segments if num_segments is None else num_segments
    if self.num_segments != COVER and not (
        isinstance(self.num_segments, int) and self.num_segments >= 1
    ):
      raise ValueError(f"num_segments must be an int >= 1 or {COVER!r}, got {num_segments!r}.")
    self._standardize = input_pipeline.Standardize.from_config(config)  # As in evaluation.
    model = models.create_model(config.model, config.num_classes)
    label_type = config.label_type

    def forward(variables, segments):
      logits = model.apply(variables, segments, train=False)
      return models.probabilities(logits, label_type)

    def embed(variables, segments):
      _, state = model.apply(variables, segments, train=False, mutable=["intermediates"])
      return state["intermediates"][models.EMBEDDING][0]

    self._forward = jax.jit(forward)
    self._embed = jax.jit(embed)
    # One device: checkpoints load replicated over all of them, which would run every
    # batch on each.
    self._variables = jax.device_put(
        {"params": variables["params"], "batch_stats": variables["batch_stats"]},
        jax.local_devices()[0],
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
    overrides it); `labels` to `load_labels` (a LabelInfo or a labels/manifest JSON path).
    """
    if not Path(workdir).is_dir():
      raise FileNotFoundError(f"Workdir {workdir} does not exist.")
    if not isinstance(config, ml_collections.ConfigDict):
      config = load_config(workdir, config)
    if not isinstance(labels, LabelInfo):
      labels = load_labels(workdir, config, labels)
    variables = checkpointing.load_variables(workdir, config, which)
    return cls(config, variables, labels, batch_size=batch_size, num_segments=num_segments)

  @property
  def num_classes(self) -> int:
    return len(self.labels.vocabulary)

  # --- Segments and the batched forward pass ---

  def segments(self, mono: np.ndarray) -> np.ndarray:
    """The `(k, input_size)` float32 model inputs of a mono clip at `self.sample_rate`."""
    count = self.num_segments
    if count == COVER:
      count = max(1, math.ceil(len(mono) / self.input_size))
    segments = input_pipeline.segment_clip(mono, self.input_size, count).astype(np.float32)
    return self._standardize(segments)

  def _prepare_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate <= 0:
      raise ValueError(f"sample_rate must be > 0, got {sample_rate}.")
    mono = audio.resample(to_mono_float(waveform), int(sample_rate), self.sample_rate)
    return self.segments(mono)

  def _score_stream(self, items: Iterable[tuple[Any, np.ndarray | None]]) -> Iterator[tuple]:
    """`score_segment_stream` with this model's forward pass and batch shape."""
    score_batch = lambda batch: np.asarray(self._forward(self._variables, batch))
    return score_segment_stream(items, score_batch, self.batch_size, self.input_size)

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
    items = ((i, self._prepare_waveform(w, r)) for i, (w, r) in pairs)
    scores = [result for _, result in self._score_stream(items)]
    return np.stack(scores) if scores else np.zeros((0, self.num_classes), np.float32)

  def _in_batches(self, fn: Callable, segments: np.ndarray) -> np.ndarray:
    """`fn(variables, batch)` over `segments` in fixed-size batches (one compile), unpadded."""
    outputs = []
    for first in range(0, len(segments), self.batch_size):
      chunk = segments[first : first + self.batch_size]
      padded = np.zeros((self.batch_size, self.input_size), np.float32)
      padded[: len(chunk)] = chunk
      outputs.append(np.asarray(fn(self._variables, padded))[: len(chunk)])
    return np.concatenate(outputs)

  def embed(self, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str], list[dict]]:
    """Clip embeddings of audio files: `(embeddings (files, D) float32, paths, failures)`.

    A file's embedding is the mean over its segments (the `segments` setting, as for scores)
    of what the head reads (`models.EMBEDDING`: the pooled trunk features). Files that
    cannot be decoded are left out and listed in `failures` as {"path", "error"}.
    """
    rows, kept, failures = [], [], []
    for path in paths:
      try:
        segments, _ = self.load_segments(path)
      except audio.AudioError as e:
        failures.append({"path": str(path), "error": str(e)})
        continue
      embedding = self._in_batches(self._embed, segments).mean(axis=0)
      if not np.isfinite(embedding).all():
        failures.append({"path": str(path), "error": "non-finite embedding"})
        continue
      rows.append(embedding.astype(np.float32))
      kept.append(str(path))
    width = rows[0].shape[-1] if rows else 0
    return (np.stack(rows) if rows else np.zeros((0, width), np.float32)), kept, failures

  def timeline(
      self, path: str | os.PathLike, hop_seconds: float, chunk_segments: int = 256
  ) -> dict[str, np.ndarray]:
    """Class scores over time of one file: segments every `hop_seconds`, streamed.

    Returns {"start", "end"} (seconds, `(T,)`) and "scores" `(T, num_classes)`. Only
    `chunk_segments` segments are decoded at a time, so a long recording costs what a short
    one does. Raises `audio.AudioError` for files that cannot be decoded.
    """
    if hop_seconds <= 0:
      raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}.")
    info = audio.file_info(path)
    length = math.ceil(info["frames"] * self.sample_rate / info["sample_rate"])
    hop = max(1, round(hop_seconds * self.sample_rate))
    starts = np.arange(0, max(length - self.input_size, 0) + 1, hop, dtype=np.int64)
    scores = []
    for first in range(0, len(starts), chunk_segments):
      segments, _ = audio.read_segments(
          path, self.sample_rate, self.input_size, None, self._standardize,
          starts=starts[first : first + chunk_segments],
      )
      scores.append(self._in_batches(self._forward, segments))
    seconds = starts / self.sample_rate
    return {"start": seconds, "end": seconds + self.input_size / self.sample_rate,
            "scores": np.concatenate(scores).astype(np.float32)}

  def predict_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Clip scores `(num_classes,)` of one waveform (see `predict_batch`)."""
    return self.predict_batch([waveform], sample_rate)[0]

  # --- Files ---

  def load_segments(self, path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decodes a file (any rate, channels, length) to model inputs; returns (segments, seconds).

    Raises `audio.AudioError` for files that cannot be decoded.
    """
    count = None if self.num_segments == COVER else self.num_segments
    # Streams: only the frames the segments cover are decoded (issue 10 item 11).
    return audio.read_segments(path, self.sample_rate, self.input_size, count, self._standardize)

  def describe(
      self, scores: np.ndarray, top_k: int = DEFAULT_TOP_K, threshold: float | None = None
  ) -> dict[str, Any]:
    """`describe_scores` with this run's labels; `threshold` defaults to f_score_threshold."""
    threshold = self.config.f_score_threshold if threshold is None else threshold
    return describe_scores(scores, self.labels, top_k, threshold)

  def predict_files(self, paths: Sequence[str | os.PathLike], **options: Any) -> list[dict]:
    """One result dict per path, in order; takes `iter_predict_files`'s options."""
    return list(self.iter_predict_files(paths, **options))

  def iter_predict_files(
      self,
      paths: Sequence[str | os.PathLike],
      *,
      top_k: int = DEFAULT_TOP_K,
      threshold: float | None = None,
      progress: bool | None = None,
      num_threads: int = DEFAULT_THREADS,
  ) -> Iterator[dict[str, Any]]:
    """One result dict per path, yielded in order as each is ready (see `file_record`).

    Files are decoded by `num_threads` threads while the model runs. A file that cannot be
    read gets `error` ("kind: reason") and empty scores; the others go on. `progress`
    shows a bar on stderr (default: from PROGRESS_MIN_FILES files on); `top_k` and
    `threshold` as in `describe`.
    """
    from tqdm import tqdm

    threshold = self.config.f_score_threshold if threshold is None else threshold
    show = len(paths) >= PROGRESS_MIN_FILES if progress is None else progress
    decoded = _map_ahead(self._decode, paths, num_threads)
    with tqdm(total=len(paths), unit="file", desc="predict", disable=not show) as bar:
      for (path, info), scores in self._score_stream(
          ((path, info), info.pop("segments", None)) for path, info in decoded
      ):
        bar.update(1)
        yield file_record(path, info, scores, self.labels, top_k, threshold)

  def _decode(self, path) -> dict[str, Any]:
    """Runs in a worker thread; never raises (an unreadable file becomes an error record)."""
    try:
      segments, seconds = self.load_segments(path)
    except audio.AudioError as e:
      return {"error": f"{e.kind}: {e.reason}"}
    except Exception as e:  # A file must not stop the run, whatever the decoder raises.
      return {"error": f"failed: {type(e).__name__}: {e}"}
    return {"segments": segments, "duration_s": round(seconds, 3), "num_segments": len(segments)}


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
    path: str | os.PathLike, decoded: dict[str, Any], scores: np.ndarray | None,
    labels: LabelInfo, top_k: int, threshold: float,
) -> dict[str, Any]:
  """The result of one file: file, error, duration_s, num_segments, then `describe_scores`'s
  fields (empty when the file could not be decoded). See docs/predict.md."""
  record = {"file": str(path), "error": decoded.get("error"),
            "duration_s": decoded.get("duration_s"),
            "num_segments": 0 if scores is None else decoded["num_segments"]}
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


def _map_ahead(fn: Callable, items: Sequence, num_threads: int) -> Iterator[tuple[Any, Any]]:
  """(item, fn(item)) in order, computed by `num_threads` threads at most 2x that far ahead.

  The bound keeps memory flat on large folders (decoded audio waits for the model).
  """
  if num_threads <= 1:
    yield from ((item, fn(item)) for item in items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending: collections.deque = collections.deque()
    iterator = iter(items)
    for item in iterator:
      pending.append((item, pool.submit(fn, item)))
      if len(pending) >= 2 * num_threads:
        break
    while pending:
      item, future = pending.popleft()
      for next_item in iterator:
        pending.append((next_item, pool.submit(fn, next_item)))
        break
      yield item, future.result()


# --- Finding files and writing results ------------------------------------------------------


def find_audio_files(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
  """Expands folders (recursively, sorted, hidden entries skipped) to their audio files.

  Returns (files, notes): a path given directly is always kept (a missing or non-audio file
  is then reported by prediction), and so is a broken symbolic link with an audio name found
  in a folder (reported as failed, with its target); `notes` names folders that held no
  audio file.
  """
  files, notes = [], []
  for path in map(Path, paths):
    if not path.is_dir():
      files.append(path)
      continue
    found = sorted(
        p for p in path.rglob("*")
        if p.suffix.lower() in audio.AUDIO_EXTENSIONS and (p.is_file() or _broken_link(p))
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
      extensions = ", ".join(sorted(audio.AUDIO_EXTENSIONS))
      notes.append(f"{path}: no audio files (looked for {extensions})")
    files.extend(found)
  return files, notes


def _broken_link(path: Path) -> bool:
  return path.is_symlink() and not path.exists()


def display_name(path: str | os.PathLike) -> str:
  """A printable form of a path: bytes that are not UTF-8 shown as `\\xNN` (for tables and
  plot titles; JSON and CSV outputs keep the exact name, see docs/predict.md)."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_json(results: list[dict], out: io.TextIOBase, meta: dict[str, Any]) -> None:
  """`{...meta, "files": [one record per file]}` as indented JSON.

  ASCII-only (`ensure_ascii`): a file name that is not UTF-8 is written with `\\udcXX`
  escapes, and `os.fsencode(json.load(f)["files"][i]["file"])` gives its bytes back.
  """
  json.dump({**meta, "files": results}, out, indent=2, allow_nan=False)
  out.write("\n")


def write_csv(results: list[dict], out: io.TextIOBase, labels: LabelInfo) -> None:
  """One row per file: file, error, top_k, above_threshold, [eval_label], one column per class.

  Multi-label cells join labels with ';'; top_k cells are `label:score` pairs. Open `out`
  with `errors="surrogateescape"` (as `main` does): a file name that is not UTF-8 is then
  written as its bytes, read back with the same errors handler.
  """
  extra = ["eval_label"] if labels.eval_label_map is not None else []
  writer = csv.writer(out)
  writer.writerow(["file", "error", "top_k", "above_threshold", *extra, *labels.vocabulary])
  for r in results:
    top = ";".join(f"{t['label']}:{t['score']:.6f}" for t in r["top_k"])
    scores = [f"{r['scores'][name]:.6f}" if r["scores"] else "" for name in labels.vocabulary]
    row = [r["file"], r["error"] or "", top, ";".join(r["above_threshold"])]
    row += [r.get("eval_label") or ""] if extra else []
    writer.writerow(row + scores)


def write_timeline(
    predictor: Predictor, path: str | os.PathLike, out_dir: str | os.PathLike, hop_seconds: float
) -> Path:
  """Writes `<name>.timeline.csv` and `<name>.timeline.png` for one file; returns the CSV path."""
  from matplotlib.figure import Figure

  timeline = predictor.timeline(path, hop_seconds)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  name = Path(os.fsdecode(path)).name
  classes = list(predictor.labels.vocabulary)
  csv_path = out / f"{name}.timeline.csv"
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["start_s", "end_s", *classes])
    for start, end, row in zip(timeline["start"], timeline["end"], timeline["scores"],
                               strict=True):
      writer.writerow([f"{start:.3f}", f"{end:.3f}", *(f"{v:.5f}" for v in row)])
  figure = Figure(figsize=(max(6.0, min(20.0, len(timeline["start"]) / 20)), 1 + 0.3 * len(classes)))
  ax = figure.subplots()
  end = float(timeline["end"][-1]) if len(timeline["end"]) else 0.0
  image = ax.imshow(timeline["scores"].T, aspect="auto", origin="lower", vmin=0.0, vmax=1.0,
                    extent=(0.0, end, -0.5, len(classes) - 0.5), interpolation="nearest")
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("time (s)")
  ax.set_title(display_name(name))
  figure.colorbar(image, ax=ax, label="score")
  figure.savefig(out / f"{name}.timeline.png", dpi=80, bbox_inches="tight")
  return csv_path


def format_table(results: list[dict], threshold: float) -> str:
  """Human-readable lines: file, top-k labels with scores, labels above the threshold."""
  names = [display_name(r["file"]) for r in results]
  width = min(max((len(name) for name in names), default=4), 60)
  lines = []
  for r, name in zip(results, names, strict=True):
    name = name if len(name) <= width else "..." + name[-(width - 3):]
    if r["error"]:
      lines.append(f"{name:<{width}}  ERROR {r['error']}")
      continue
    top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"])
    line = f"{name:<{width}}  {top}  | >= {threshold:g}: {', '.join(r['above_threshold']) or '-'}"
    if "eval_label" in r:
      line += f"  | eval label: {r['eval_label']}"
    lines.append(line)
  return "\n".join(lines)


# --- Command line ---------------------------------------------------------------------------


def _segments_arg(value: str) -> int | str:
  if value == COVER:
    return value
  try:
    count = int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1 or {COVER!r}") from None
  if count < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1 or {COVER!r}")
  return count


def build_parser() -> argparse.ArgumentParser:
  p = cli.FlagParser(
      prog="python -m samplecnn_jax.predict",
      description="Score audio files with a trained workdir (see docs/predict.md).",
  )
  p.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER",
                 help="audio files, or folders searched recursively for audio files")
  p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints)")
  p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                 help="which checkpoint to load (default: best)")
  p.add_argument("--config", default=None,
                 help="config that trained the workdir (file.py[:arg] or .json); default: "
                 "the workdir's config.json")
  p.add_argument("--labels", default=None,
                 help="labels.json or store manifest.json with the class names; default: "
                 "workdir/labels.json, then the store manifest")
  p.add_argument("--output", default=None, help="write results to FILE.json or FILE.csv")
  p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                 help="output format (default: from --output's extension; table on stdout)")
  p.add_argument("--top_k", type=int, default=DEFAULT_TOP_K,
                 help=f"labels listed per file (default {DEFAULT_TOP_K})")
  p.add_argument("--threshold", type=float, default=None,
                 help="list labels scoring at least this (default: config.f_score_threshold)")
  p.add_argument("--segments", type=_segments_arg, default=None,
                 help=f"segments per file: an integer, or {COVER!r} for the whole file "
                 "(default: config.eval_segments, as in evaluation)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="segments per forward pass (default: config.eval_batch_size)")
  p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                 help=f"decoding threads (default {DEFAULT_THREADS})")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  p.add_argument("--embeddings", default=None, metavar="OUT.npz",
                 help="also write clip embeddings (files x D, the mean over segments of what "
                 "the head reads) and their paths to OUT.npz")
  p.add_argument("--timeline", default=None, metavar="OUT_DIR",
                 help="also write, per file, <name>.timeline.csv (class scores every "
                 "--hop_seconds) and <name>.timeline.png (a classes x time heat map)")
  p.add_argument("--hop_seconds", type=float, default=None,
                 help="hop of --timeline segments, s (default: half a segment)")
  return p


def _output_format(args) -> str:
  if args.format:
    return args.format
  if args.output is None:
    return "table"
  suffix = Path(args.output).suffix.lower().lstrip(".")
  if suffix not in ("json", "csv"):
    raise ValueError(f"--output {args.output}: use a .json or .csv name, or pass --format.")
  return suffix


def main(argv: Sequence[str] | None = None) -> int:
  """Exit status: 0 when at least one file was scored (failures are in the output), 1 when
  none could be, 2 for an unusable workdir or arguments."""
  args = build_parser().parse_intermixed_args(argv)
  if args.top_k < 0 or args.threads < 1:
    print("predict: error: --top_k must be >= 0 and --threads >= 1.", file=sys.stderr)
    return 2
  # Orbax warns on every read-only restore; a CLI user cannot act on it.
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    fmt = _output_format(args)
    predictor = Predictor.from_workdir(
        args.workdir, args.checkpoint, config=args.config, labels=args.labels,
        batch_size=args.batch_size, num_segments=args.segments,
    )
  except (OSError, ValueError, KeyError) as e:  # Includes CheckpointMismatchError.
    print(f"predict: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # A damaged checkpoint: Orbax/tensorstore/JSON errors of any type.
    print(f"predict: error: cannot load the {args.checkpoint} checkpoint of {args.workdir} "
          f"(damaged or incomplete?): {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
    return 2
  files, notes = find_audio_files(args.paths)
  for note in notes:
    print(f"predict: {note}", file=sys.stderr)
  if not files:
    print("predict: error: no audio files to score.", file=sys.stderr)
    return 1
  threshold = predictor.config.f_score_threshold if args.threshold is None else args.threshold
  results = predictor.predict_files(
      files, top_k=args.top_k, threshold=threshold, num_threads=args.threads,
      progress=False if args.no_progress else None,
  )
  meta = {
      "workdir": str(args.workdir), "checkpoint": args.checkpoint,
      "label_type": predictor.config.label_type, "sample_rate": predictor.sample_rate,
      "input_size": predictor.input_size, "segments": predictor.num_segments,
      "threshold": threshold, "top_k": args.top_k, "labels": list(predictor.labels.vocabulary),
  }
  if args.output:  # surrogateescape: a file name that is not UTF-8 is written as its bytes.
    out = open(args.output, "w", newline="", encoding="utf-8", errors="surrogateescape")
  else:
    out = sys.stdout
    if fmt == "csv" and hasattr(out, "reconfigure"):
      out.reconfigure(errors="surrogateescape")
  try:
    if fmt == "json":
      write_json(results, out, meta)
    elif fmt == "csv":
      write_csv(results, out, predictor.labels)
    else:
      out.write(format_table(results, threshold) + "\n")
  finally:
    if args.output:
      out.close()
  failed = sum(1 for r in results if r["error"])
  if args.embeddings:
    embeddings, kept, failures = predictor.embed(files)
    np.savez(args.embeddings, embeddings=embeddings, paths=np.asarray(kept, dtype=str))
    print(f"predict: {len(kept)} embeddings ({embeddings.shape[-1]} dims) -> {args.embeddings}",
          file=sys.stderr)
    for failure in failures:
      print(f"predict: no embedding for {failure['path']}: {failure['error']}", file=sys.stderr)
  if args.timeline:
    hop = args.hop_seconds or predictor.input_size / predictor.sample_rate / 2
    for path in files:
      try:
        written = write_timeline(predictor, path, args.timeline, hop)
      except (audio.AudioError, ValueError) as e:
        print(f"predict: no timeline for {path}: {e}", file=sys.stderr)
        continue
      print(f"predict: timeline of {path} -> {written}", file=sys.stderr)
  where = f" -> {args.output}" if args.output else ""
  print(f"predict: {len(results) - failed} files scored, {failed} failed{where}", file=sys.stderr)
  return 0 if failed < len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
