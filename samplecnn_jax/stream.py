"""Keyword spotting on a live stream: slide the model's window, smooth, fire once per word.

  arecord -f S16_LE -r 16000 -c 1 | python -m samplecnn_jax.stream --model=kws.onnx
  python -m samplecnn_jax.stream --workdir=DIR --input=recording.flac

The engine, `Spotter`, takes mono float32 audio at the model's rate in pieces of any size
(`feed`) and returns `Detection`s: every `hop` samples the last `input_size` samples are one
window; the class scores of the last `smooth` windows are averaged; a class fires when its
average reaches `threshold`, and then stays quiet for `refractory_s` (a word spans several
windows: without it one word fires several times). Background classes (`_silence_`,
`_unknown_`, ... see `DEFAULT_BACKGROUND`) never fire. A run with an eval label map (Speech
Commands) is spotted on its scoring classes: the probabilities of the training classes that
map to one scoring class are summed (so the 20 auxiliary words are `_unknown_`). Memory is
bounded (one window plus one read, and `smooth` score rows) whatever the stream's length.
A SampleCNN (ONNX or JAX) reuses its early blocks' outputs from one window to the next
(`incremental`: the same scores for a third of the work); the command then rounds the hop
to a whole number of their frames and says so on stderr at EOF.

The command reads 16 kHz mono s16le PCM from stdin (or `--input=FILE`, any format soundfile
reads, resampled to the model's rate), writes one JSON line per detection (`time_s`: the
stream time at which the detection was made, i.e. the end of the window that fired; `label`;
`score`), flushed at once, and ends at EOF. The network is a workdir's JAX model or an exported
ONNX model (`--model`, then JAX is not imported), both `scoring.ClipScorer`s. This module does
not open audio devices (pipe `arecord`/`sox`/`ffmpeg` into it).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from typing import BinaryIO

import numpy as np
from absl import flags

from samplecnn_jax import cli, exported, scoring
from samplecnn_jax.incremental import IncrementalWindows, for_network, hop_for

PROG = "python -m samplecnn_jax.stream"
RAW_RATE = 16000  # Hz of the s16le PCM read from stdin.
DEFAULT_HOP_MS = 100.0
DEFAULT_SMOOTH = 3  # Windows averaged.
DEFAULT_REFRACTORY_S = 1.0
DEFAULT_BACKGROUND = ("_silence_", "_unknown_", "_background_noise_", "silence", "unknown",
                      "background", "noise")
MAX_WINDOWS_PER_PASS = 32  # Windows scored in one forward pass when a read brings many.
READ_BYTES = 8192  # Most bytes of stdin read at once (less when less has arrived).
# Starts of container files that are not raw PCM: piping a file in by mistake is an error.
CONTAINERS = {b"RIFF": "a WAV file", b"fLaC": "a FLAC file", b"OggS": "an Ogg file",
              b"ID3": "an MP3 file", b"FORM": "an AIFF file", b"\x1aE\xdf\xa3": "a Matroska/WebM file"}


@dataclasses.dataclass(frozen=True)
class Detection:
  """One fired class: when (s of stream, the end of the window), which, how sure (smoothed)."""

  time_s: float
  label: str
  score: float

  def to_json(self) -> str:
    return json.dumps({"time_s": round(self.time_s, 3), "label": self.label,
                       "score": round(self.score, 4)})


class Spotter:
  """Sliding-window detection over a stream (see the module docstring)."""

  def __init__(
      self,
      scorer: scoring.ClipScorer,
      *,
      hop: int,
      smooth: int = DEFAULT_SMOOTH,
      threshold: float | None = None,
      refractory_s: float = DEFAULT_REFRACTORY_S,
      background: Collection[str] = DEFAULT_BACKGROUND,
      incremental: bool = True,
  ):
    """`hop` samples between windows; `threshold` defaults to the run's.

    `incremental`: the model reuses its early blocks' outputs between windows when it can
    (`incremental.for_network`; the scores are the same); `note` says whether it does.
    """
    if hop < 1 or smooth < 1 or refractory_s < 0:
      raise ValueError(f"hop and smooth must be >= 1 and refractory_s >= 0, got hop={hop}, "
                       f"smooth={smooth}, refractory_s={refractory_s}.")
    self.scorer, self.hop, self.refractory_s = scorer, int(hop), float(refractory_s)
    self.threshold = scorer.threshold if threshold is None else float(threshold)
    labels = scorer.labels
    if labels.eval_label_map is not None:  # Sum training classes into scoring classes.
      self.names = list(labels.eval_vocabulary)
      self.merge = np.zeros((len(labels.vocabulary), len(self.names)), np.float32)
      self.merge[np.arange(len(labels.vocabulary)), list(labels.eval_label_map)] = 1.0
    else:
      self.names, self.merge = list(labels.vocabulary), None
    self.active = np.array([name not in set(background) for name in self.names])
    self.recent: deque[np.ndarray] = deque(maxlen=int(smooth))
    self.last_fired = np.full(len(self.names), -np.inf)
    self.buffer = np.zeros((0,), np.float32)
    self.buffer_start = 0  # Stream sample index of buffer[0].
    self.next_start = 0  # Stream sample index where the next window starts.
    self.incremental: IncrementalWindows | None = None
    self.note = "scoring every window whole"
    if incremental and hasattr(scorer.network, "cut_for"):
      network, scaling = scorer.network, scorer.inputs.scaling
      self.incremental, self.note = for_network(
          network, scorer.input_size, self.hop,
          check=lambda batch: network(scaling(batch))[scoring.PROBABILITIES])

  @property
  def rate(self) -> int:
    return self.scorer.sample_rate

  def feed(self, samples: np.ndarray) -> list[Detection]:
    """Takes the next mono float32 samples (at `rate`); returns what fired, in time order."""
    self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32)])
    size = self.scorer.input_size
    end = self.buffer_start + len(self.buffer)
    detections = []
    while self.next_start + size <= end:
      starts = []
      while self.next_start + size <= end and len(starts) < MAX_WINDOWS_PER_PASS:
        starts.append(self.next_start)
        self.next_start += self.hop
      windows = np.stack([self.buffer[s - self.buffer_start : s - self.buffer_start + size]
                          for s in starts])
      for start, scores in zip(starts, self._scores(windows, starts), strict=True):
        detections.extend(self._update((start + size) / self.rate, scores))
    drop = min(self.next_start - self.buffer_start, len(self.buffer))
    self.buffer, self.buffer_start = self.buffer[drop:], self.buffer_start + drop
    return detections

  def _scores(self, windows: np.ndarray, starts: Sequence[int]) -> np.ndarray:
    """Class scores `(n, names)` of `n` windows starting at `starts`."""
    inputs = self.scorer.inputs.scaling(windows.copy())
    if self.incremental is not None:
      probabilities = np.stack([self.incremental(window, start)
                                for window, start in zip(inputs, starts, strict=True)])
    else:
      [(_, outputs)] = scoring.stream_batches(
          [(0, inputs)], self.scorer.network, MAX_WINDOWS_PER_PASS, self.scorer.input_size)
      probabilities = outputs[scoring.PROBABILITIES]
    return probabilities if self.merge is None else probabilities @ self.merge

  def _update(self, time_s: float, scores: np.ndarray) -> Iterator[Detection]:
    self.recent.append(scores)
    smoothed = np.mean(self.recent, axis=0)
    ready = (self.active & (smoothed >= self.threshold)
             & (time_s - self.last_fired >= self.refractory_s))
    for c in np.flatnonzero(ready):
      self.last_fired[c] = time_s
      yield Detection(time_s, self.names[c], float(smoothed[c]))


# --- Reading a stream -----------------------------------------------------------------------


def pcm_blocks(stream: BinaryIO, read_bytes: int = READ_BYTES) -> Iterator[np.ndarray]:
  """Mono float32 blocks of s16le PCM from a binary stream, as they arrive, until EOF.

  Raises ValueError when the stream starts like a container file (WAV, FLAC, ...) or like
  text, or ends in the middle of a sample.
  """
  read = getattr(stream, "read1", stream.read)
  pending, first = b"", True
  while chunk := read(read_bytes):
    if first:
      _check_raw(chunk)
      first = False
    data = pending + chunk
    usable = len(data) - len(data) % 2
    pending = data[usable:]
    if usable:
      yield np.frombuffer(data[:usable], "<i2").astype(np.float32) / 32768.0
  if pending:
    raise ValueError("the stream ended in the middle of a 16-bit sample: it is not s16le PCM")


def _check_raw(head: bytes) -> None:
  for magic, what in CONTAINERS.items():
    if head.startswith(magic):
      raise ValueError(f"stdin holds {what}, not raw PCM: pass it as --input=FILE, or convert "
                       "it with `ffmpeg -i IN -f s16le -ac 1 -ar 16000 -`")
  sample = head[:4096]
  if len(sample) >= 16 and all(b in b"\t\n\r" or 32 <= b < 127 for b in sample):
    raise ValueError("stdin holds text, not 16 kHz mono s16le PCM: pipe audio in "
                     "(`arecord -f S16_LE -r 16000 -c 1`), or pass --input=FILE")


def file_blocks(path: str, rate: int, block: int = 16384) -> Iterator[np.ndarray]:
  """Mono float32 blocks of an audio file at `rate` (streamed and resampled), until its end."""
  import soundfile as sf
  import soxr

  try:
    file = sf.SoundFile(path)
  except (sf.LibsndfileError, RuntimeError) as e:
    raise ValueError(f"--input={path}: not a readable audio file ({e})") from e
  with file:
    resampler = None
    if file.samplerate != rate:
      resampler = soxr.ResampleStream(file.samplerate, rate, 1, dtype="float32", quality="HQ")
    for frames in file.blocks(block, dtype="float32", always_2d=True):
      mono = frames.mean(axis=1)
      yield mono if resampler is None else resampler.resample_chunk(mono)
    if resampler is not None:
      yield resampler.resample_chunk(np.zeros((0,), np.float32), last=True)


# --- Command line ---------------------------------------------------------------------------


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "Training workdir to spot with (JAX).", flag_values=fv)
  flags.DEFINE_string("model", None, "An exported FILE.onnx to spot with (onnxruntime, no JAX).",
                      flag_values=fv)
  cli.define_checkpoint(fv)
  flags.DEFINE_string("input", None, "Read this audio file (any format soundfile reads) "
                      "instead of 16 kHz mono s16le PCM on stdin.", flag_values=fv)
  flags.DEFINE_float("hop_ms", DEFAULT_HOP_MS, "Milliseconds between windows.", flag_values=fv)
  flags.DEFINE_integer("smooth", DEFAULT_SMOOTH, "Windows whose scores are averaged.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_float("threshold", None, "Fire when a smoothed score reaches this (default: "
                     "the run's f_score_threshold).", flag_values=fv)
  flags.DEFINE_float("refractory_s", DEFAULT_REFRACTORY_S, "Seconds a class stays quiet after "
                     "it fired.", lower_bound=0.0, flag_values=fv)
  flags.DEFINE_list("background", list(DEFAULT_BACKGROUND), "Classes that never fire.",
                    flag_values=fv)
  flags.DEFINE_boolean("incremental", True, "Reuse the early blocks' outputs "
                       "between overlapping windows (same scores, about 3x faster; the hop is "
                       "rounded to a whole number of their frames, at most 3%).", flag_values=fv)


def load_scorer(workdir: str | None, model: str | None, checkpoint: str = "best"
                ) -> scoring.ClipScorer:
  """The scorer of `--workdir` (JAX, imported only then) or `--model` (onnxruntime)."""
  if (workdir is None) == (model is None):
    raise cli.UsageError("name the model to spot with: --workdir=DIR or --model=FILE.onnx, "
                         "not both")
  if model is not None:
    return exported.OnnxPredictor.from_file(model, batch_size=MAX_WINDOWS_PER_PASS,
                                            num_segments=1)
  from samplecnn_jax.inference import Predictor  # JAX: not imported for --model.

  return Predictor.from_workdir(workdir, checkpoint, batch_size=MAX_WINDOWS_PER_PASS,
                                num_segments=1)


def spotting_hop(scorer: scoring.ClipScorer, hop_ms: float, incremental: bool = True) -> int:
  """The hop in samples for `hop_ms`: rounded to whole frames of the blocks an ONNX model can
  reuse (`incremental.hop_for`, at most 3%) when `incremental`, else as asked."""
  hop = max(1, round(hop_ms * scorer.sample_rate / 1000))
  if incremental and hasattr(scorer.network, "cut_for"):
    hop = hop_for(scorer.network, hop, scorer.input_size)
  return hop


def _command(fv: flags.FlagValues, _: list[str]) -> int:
  if fv.hop_ms <= 0:
    raise cli.UsageError(f"--hop_ms={fv.hop_ms}: the hop must be > 0 ms")
  scorer = load_scorer(fv.workdir, fv.model, fv.checkpoint)
  if fv.input is None and scorer.sample_rate != RAW_RATE:
    raise cli.UsageError(f"the model runs at {scorer.sample_rate} Hz and stdin is read as "
                         f"{RAW_RATE} Hz: pass the audio as --input=FILE (resampled)")
  hop = spotting_hop(scorer, fv.hop_ms, fv.incremental)
  spotter = Spotter(scorer, hop=hop, smooth=fv.smooth, threshold=fv.threshold,
                    refractory_s=fv.refractory_s, background=fv.background,
                    incremental=fv.incremental)
  if fv.input is not None:
    blocks = file_blocks(fv.input, scorer.sample_rate)
  else:
    blocks = pcm_blocks(sys.stdin.buffer)
  samples = fired = 0
  for block in blocks:
    samples += len(block)
    for detection in spotter.feed(block):
      print(detection.to_json(), flush=True)
      fired += 1
  print(f"stream: {samples / scorer.sample_rate:.1f} s of audio, {fired} detections; hop "
        f"{hop} samples ({1000 * hop / scorer.sample_rate:.1f} ms); {spotter.note}",
        file=sys.stderr)
  return cli.EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
  """Exit status: 0 the stream ended (EOF), 2 a usage error or a stream that is not audio."""
  return cli.run(PROG, _define_flags, _command, argv)


if __name__ == "__main__":
  sys.exit(main())
