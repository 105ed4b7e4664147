"""Grain input pipelines: training segments and evaluation batches from a prepared store.

Both take an opened `store.Store` (manifest read once per run) and, optionally, the
`ProcessSlice` of this process (default: this JAX process).

Training (`create_train_iterator`) yields fixed-length segments of `config.input_size` samples
with their clip's labels, globally shuffled with a seed (reshuffled every epoch), repeated
forever, optionally augmented (time shift, background noise), and batched to this process's
share of `config.batch_size`. The iterator is a Grain `DatasetIterator`: its `get_state()` /
`set_state()` (and `grain.checkpoint.CheckpointSave/Restore`) resume it exactly.

Evaluation (`create_eval_iterator`) yields every clip of a split as `config.eval_segments`
evenly spaced segments, each tagged with its clip's index in the split, in fixed-shape batches
with a `mask` for padding rows; `Store.clip_labels` gives the per-clip labels for scoring.

See docs/input_pipeline.md. This module reads the store format of `samplecnn_jax.store` and
cuts and scales segments by the rules of `samplecnn_jax.segments`; it does not decode audio
files, compute metrics or place arrays on devices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from samplecnn_jax.audio import to_float32
from samplecnn_jax.segments import InputScaling, segment_clip, segment_weights
from samplecnn_jax.store import READ_THREADS, Store

BACKGROUND_NOISE_SPLIT = "background_noise"  # Long noise recordings mixed in by augmentation.
TRAIN_SEGMENT_MODES = ("random", "all")


# --- Store and process --------------------------------------------------------------------


def data_dir_for(config: ml_collections.ConfigDict) -> str:
  """The prepared store of a run: `config.data_dir`, or `prepared/<config.dataset>`."""
  return config.data_dir or os.path.join("prepared", config.dataset)


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
  """Which process of how many reads: each takes its share of every global batch."""

  index: int
  count: int

  @classmethod
  def current(cls) -> ProcessSlice:
    import jax  # Imported here: spawned Grain workers never need it.

    return cls(jax.process_index(), jax.process_count())

  def local_batch(self, global_batch: int, what: str) -> int:
    """This process's rows of a global batch of `global_batch` (config field `what`)."""
    if not 0 <= self.index < self.count:
      raise ValueError(f"process_index {self.index} is not in [0, {self.count}).")
    if global_batch % self.count or global_batch < self.count:
      raise ValueError(
          f"config.{what}={global_batch} must be a positive multiple of the process count "
          f"{self.count}: each process reads {what} // process_count examples."
      )
    return global_batch // self.count


# --- Segments -------------------------------------------------------------------------------


_CROP_GRID = 16  # Blocks per input_size that `rms_crop_start` draws crop starts from.


def rms_crop_start(audio: np.ndarray, input_size: int, rng) -> int:
  """A crop start drawn with probability proportional to the crop's RMS.

  A clip's label is about what sounds in it: a uniform 1-s crop of a 5-s recording whose
  event lasts 1 s is mostly silence or decay labelled as the event. Weighting by RMS keeps
  quiet parts possible (a sustain, a soft onset) but makes silent ones rare, the training
  counterpart of `segment_pooling=rms`. The clip is summed in blocks of input_size /
  _CROP_GRID samples (a crop's energy is that of the blocks it spans, so one pass over the
  clip), the block is drawn, then the start is jittered within it; a silent clip falls back
  to uniform.
  """
  last = len(audio) - input_size
  hop = max(1, input_size // _CROP_GRID)
  span = input_size // hop  # Blocks in one crop.
  blocks = len(audio) // hop
  frames = audio[: blocks * hop].astype(np.float32).reshape(blocks, hop)
  energy = np.einsum("ij,ij->i", frames, frames)
  sums = np.concatenate([[0.0], np.cumsum(energy, dtype=np.float64)])
  rms = np.sqrt(np.maximum(sums[span:] - sums[:-span], 0.0))  # Per start block, up to scale.
  total = rms.sum()
  if not total > 0:
    return int(rng.integers(0, last + 1))
  start = min(int(rng.choice(len(rms), p=rms / total)) * hop, last)
  return start + int(rng.integers(0, min(hop, last - start + 1)))


def _crop(audio: np.ndarray, start: int | None, input_size: int, rng,
          weighting: str = "uniform") -> np.ndarray:
  """A copied `input_size` window at `start` (random when None, drawn by `weighting`); short
  clips padded at random."""
  if len(audio) < input_size:
    out = np.zeros((input_size,), audio.dtype)
    offset = int(rng.integers(0, input_size - len(audio) + 1))
    out[offset : offset + len(audio)] = audio
    return out
  if start is None and weighting == "rms" and len(audio) > input_size:
    start = rms_crop_start(audio, input_size, rng)
  elif start is None:
    start = int(rng.integers(0, len(audio) - input_size + 1))
  return audio[start : start + input_size].copy()


def _speed_crop(audio: np.ndarray, start: int | None, input_size: int, speed_range: float,
                rng, weighting: str = "uniform") -> np.ndarray:
  """A random crop played `factor` ~ U(1 - r, 1 + r) times as fast: `factor * input_size`
  samples resampled to `input_size` by linear interpolation (float32).

  Speed perturbation changes tempo and pitch together, as a different player, speaker or
  instrument size would; linear interpolation is crude but this is augmentation, not audio
  output, and it costs well under a millisecond a crop.
  """
  factor = float(rng.uniform(1.0 - speed_range, 1.0 + speed_range))
  length = max(2, int(round(input_size * factor)))
  if start is not None:  # A fixed segment ('all' mode): read from its start, within the clip.
    start = min(start, max(len(audio) - length, 0))
  window = to_float32(_crop(audio, start, length, rng, weighting))
  positions = np.linspace(0.0, length - 1, input_size)
  return np.interp(positions, np.arange(length), window).astype(np.float32)


# --- Training -------------------------------------------------------------------------------


def check_train_segments(mode: str) -> None:
  """The one check of `config.train_segments` (`train.setup` calls it before anything runs)."""
  if mode not in TRAIN_SEGMENT_MODES:
    raise ValueError(
        f"config.train_segments must be one of {TRAIN_SEGMENT_MODES}, got {mode!r}."
    )


def _segment_plan(config, store: Store) -> tuple[np.ndarray | None, np.ndarray | None, int]:
  """For 'all' mode: the clip and start of every non-overlapping segment; else clip count.

  A clip yields `max(1, length // input_size)` segments (the remainder is dropped; a clip
  shorter than one segment gives one zero-padded segment).
  """
  check_train_segments(config.train_segments)
  if config.train_segments == "random":
    return None, None, store.num_clips(config.train_split)
  counts = np.maximum(store.clip_lengths(config.train_split) // config.input_size, 1)
  clips = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
  first = np.cumsum(counts) - counts
  starts = (np.arange(len(clips)) - np.repeat(first, counts)) * config.input_size
  return clips, starts.astype(np.int64), len(clips)


class _EpochShuffle:
  """Grain map_with_index: stream position -> example, a new seeded permutation every epoch.

  Used instead of `MapDataset.shuffle`, whose per-element cost grows as the dataset shrinks
  (about 180 us per element at 100 examples); one numpy permutation per epoch costs
  milliseconds for any size.
  """

  def __init__(self, num_examples: int, seed: int):
    self.num_examples, self.seed = int(num_examples), int(seed)
    self._orders: dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {**self.__dict__, "_orders": {}}

  def __call__(self, position: int, example_in_epoch: int) -> int:
    epoch = position // self.num_examples
    order = self._orders.get(epoch)
    if order is None:
      order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      # Threads near an epoch boundary may still need the neighbouring epoch's order.
      kept = {e: o for e, o in self._orders.items() if abs(e - epoch) == 1}
      self._orders = {**kept, epoch: order}
    return int(order[example_in_epoch])


class _BackgroundNoise:
  """The `background_noise` recordings, loaded on first use in whichever process mixes them."""

  def __init__(self, store: Store):
    self.records = store.clips(BACKGROUND_NOISE_SPLIT)
    self._audio = None

  def __getstate__(self):
    return {"records": self.records, "_audio": None}

  def crop(self, input_size: int, rng) -> np.ndarray:
    if self._audio is None:
      self._audio = [self.records[i]["audio"] for i in range(len(self.records))]
    recording = self._audio[int(rng.integers(len(self._audio)))]
    return to_float32(_crop(recording, None, input_size, rng))


class _TrainExample:
  """Grain random_map: example index -> dict(audio, label_indices) of one training segment.

  Audio stays int16 unless augmentation needs float arithmetic; `_TrainBatch` converts the
  whole batch at once, which is cheaper than converting per example.
  """

  def __init__(self, config, store: Store, clips: np.ndarray | None, starts: np.ndarray | None):
    self.records = store.clips(config.train_split)
    self.clips, self.starts = clips, starts
    self.input_size = int(config.input_size)
    self.shift = int(round(config.augment.time_shift_ms * config.sample_rate / 1000.0))
    self.noise_prob = float(config.augment.noise_prob)
    self.noise_volume = float(config.augment.noise_volume)
    self.noise = _BackgroundNoise(store) if self.noise_prob > 0 else None
    self.waveform = WaveformAugment.from_config(config)
    self.mixup = float(config.augment.mixup_alpha) > 0
    self.speed_range = float(config.augment.speed_range)
    self.crop_weighting = config.augment.crop_weighting

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    clip, start = index, None
    if self.clips is not None:
      clip, start = int(self.clips[index]), int(self.starts[index])
    record = self.records[clip]
    if self.speed_range > 0:
      audio = _speed_crop(record["audio"], start, self.input_size, self.speed_range, rng,
                          self.crop_weighting)
    else:
      audio = _crop(record["audio"], start, self.input_size, rng, self.crop_weighting)
    if self.shift > 0 or self.noise is not None:
      audio = self._augment(to_float32(audio), rng)
    if self.waveform.active:
      audio = self.waveform(to_float32(audio), rng)
    example = {"audio": audio, "label_indices": record["labels"]}
    if self.mixup:  # The batch function has no rng of its own: each example brings a seed.
      example["mix_seed"] = np.asarray(rng.integers(2**31), np.int64)
    return example

  def _augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Time shift with zero fill, then background noise at U(0, volume), clipped to [-1, 1]."""
    if self.shift > 0:
      shift = int(rng.integers(-self.shift, self.shift + 1))
      shift = max(-len(audio), min(len(audio), shift))  # Past the segment's end: silence.
      shifted = np.zeros_like(audio)
      if shift >= 0:
        shifted[shift:] = audio[: len(audio) - shift]
      else:
        shifted[:shift] = audio[-shift:]
      audio = shifted
    if self.noise is not None and rng.random() < self.noise_prob:
      volume = np.float32(rng.uniform(0.0, self.noise_volume))
      audio += volume * self.noise.crop(self.input_size, rng)
      np.clip(audio, -1.0, 1.0, out=audio)
    return audio


@dataclasses.dataclass(frozen=True)
class WaveformAugment:
  """Per-clip random gain (dB), polarity inversion and one zeroed time span; off by default.

  Applied to float audio after the time shift and background noise, clipped to [-1, 1].
  """

  gain_db: float = 0.0
  polarity_prob: float = 0.0
  time_mask_prob: float = 0.0
  time_mask_fraction: float = 0.1
  eq_db: float = 0.0

  @classmethod
  def from_config(cls, config) -> WaveformAugment:
    a = config.augment
    return cls(float(a.gain_db), float(a.polarity_prob), float(a.time_mask_prob),
               float(a.time_mask_fraction), float(a.eq_db))

  @property
  def active(self) -> bool:
    return (self.gain_db > 0 or self.polarity_prob > 0 or self.time_mask_prob > 0
            or self.eq_db > 0)

  def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.eq_db > 0:
      audio = random_equalizer(audio, self.eq_db, rng)
    if self.gain_db > 0:
      audio = audio * np.float32(10.0 ** (rng.uniform(-self.gain_db, self.gain_db) / 20.0))
    if self.polarity_prob > 0 and rng.random() < self.polarity_prob:
      audio = -audio
    if self.time_mask_prob > 0 and rng.random() < self.time_mask_prob:
      width = int(rng.integers(0, int(self.time_mask_fraction * len(audio)) + 1))
      start = int(rng.integers(0, len(audio) - width + 1))
      audio = audio.copy()
      audio[start:start + width] = 0.0
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


EQ_BANDS = 8  # Log-spaced bands of `random_equalizer`, from 50 Hz-equivalent bins to Nyquist.


def random_equalizer(audio: np.ndarray, max_db: float, rng: np.random.Generator) -> np.ndarray:
  """`audio` through a random smooth equaliser: gains drawn from U(-max_db, +max_db) dB at
  EQ_BANDS log-spaced frequencies, interpolated (in log frequency) over the whole spectrum.

  Another microphone, room or instrument body colours a sound this way; a few hundred clips
  show only a few such colourings, which a raw-waveform model otherwise learns as the class.
  Applied to the spectrum of the crop (one FFT each way; the DC gain is the lowest band's).
  """
  spectrum = np.fft.rfft(audio.astype(np.float32))
  bins = np.arange(len(spectrum), dtype=np.float64)
  centres = np.geomspace(max(1.0, len(spectrum) / 160), len(spectrum) - 1, EQ_BANDS)
  gains_db = rng.uniform(-max_db, max_db, EQ_BANDS)
  curve = np.interp(np.log(np.maximum(bins, 1.0)), np.log(centres), gains_db)
  filtered = np.fft.irfft(spectrum * (10.0 ** (curve / 20.0)), n=len(audio))
  return filtered.astype(np.float32)


def mixup(audio: np.ndarray, label: np.ndarray, alpha: float,
          rng: np.random.Generator, union: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Batch-level mixup: row i becomes lam_i * row i + (1 - lam_i) * row perm(i).

  lam_i ~ Beta(alpha, alpha), folded to >= 0.5 so each row keeps its own clip dominant.
  Labels mix the same way: one-hot rows still sum to 1 (multi_class), multi-hot rows become
  soft targets for the sigmoid cross-entropy (multi_label). With `union` (multi_label) a row
  is labelled with every event of both clips instead: an event mixed in at any level is
  there to hear, and a soft target below the 0.5 decision threshold teaches the model to
  miss it (the demo's F-score: 0.915 mixing the labels, 0.954 without mixup; seed 0).
  """
  lam = rng.beta(alpha, alpha, size=len(audio)).astype(np.float32)
  lam = np.maximum(lam, 1.0 - lam)[:, None]
  perm = rng.permutation(len(audio))
  mixed = np.maximum(label, label[perm]) if union else lam * label + (1 - lam) * label[perm]
  return lam * audio + (1 - lam) * audio[perm], mixed


class _TrainBatch:
  """Grain batch_fn: stacks examples into float32 audio and multi-hot labels in one pass."""

  def __init__(self, config):
    self.num_classes = int(config.num_classes)
    self.scaling = InputScaling.from_config(config)
    self.mixup_alpha = float(config.augment.mixup_alpha)
    self.mixup_union = config.augment.mixup_labels == "union"

  def __call__(self, examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    audio = np.empty((len(examples), len(examples[0]["audio"])), np.float32)
    label = np.zeros((len(examples), self.num_classes), np.float32)
    for row, example in enumerate(examples):
      to_float32(example["audio"], out=audio[row])
      label[row, example["label_indices"]] = 1.0
    if self.mixup_alpha > 0:
      rng = np.random.default_rng([int(e["mix_seed"]) for e in examples])
      audio, label = mixup(audio, label, self.mixup_alpha, rng, self.mixup_union)
    return {"audio": self.scaling(audio), "label": label}


def train_batches(
    config: ml_collections.ConfigDict, store: Store, *, seed: int,
    process: ProcessSlice | None = None,
) -> grain.MapDataset:
  """The endless training batches of one process as a random-access Grain `MapDataset`.

  Batch k is a pure function of (seed, k, process slice): `create_train_iterator` reads it
  with prefetching; tests and benchmarks may index it directly. `process` defaults to this
  JAX process.
  """
  store.check_matches(config)
  process = process or ProcessSlice.current()
  local_batch = process.local_batch(config.batch_size, "batch_size")
  clips, starts, num_examples = _segment_plan(config, store)
  if num_examples < process.count:
    raise ValueError(
        f"Split {config.train_split!r} of {store.path} has {num_examples} training examples, "
        f"fewer than the {process.count} processes."
    )
  if config.augment.noise_prob > 0:
    store.split_info(BACKGROUND_NOISE_SPLIT)  # Fails early, naming the splits there.
  ds = grain.MapDataset.range(num_examples).repeat(None).seed(seed)
  ds = ds.map_with_index(_EpochShuffle(num_examples, seed))
  ds = ds.random_map(_TrainExample(config, store, clips, starts))
  # Chunk c of the stream is rows [c*b, (c+1)*b); process p keeps chunks p, p + P, ..., so
  # its batch k is its contiguous block of global batch k, and the global batch assembled
  # over the processes is the 1-process batch row for row (same dropout rows, same result).
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_TrainBatch(config))
  return ds[process.index::process.count]


class TrainIterator(grain.DatasetIterator):
  """Grain's iterator with a state that does not depend on the number of worker processes.

  The state is `{"next_batch": k}`: the pipeline is a pure function of the batch index, so
  a run can resume with a different `config.num_workers` (Grain's own multiprocess state
  records per-worker positions and only restores into the same worker count). Resume with
  the same seed, batch size, train_segments and process count.
  """

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, int]:
    return {"next_batch": int(grain.experimental.get_next_index(self._parent))}

  def set_state(self, state: dict[str, Any]) -> None:
    grain.experimental.set_next_index(self._parent, int(state["next_batch"]))


def create_train_iterator(
    config: ml_collections.ConfigDict, store: Store, *, seed: int,
    process: ProcessSlice | None = None,
) -> TrainIterator:
  """An endless, checkpointable iterator of this process's training batches.

  Yields dict(audio=(B, input_size) float32, label=(B, num_classes) float32) with
  B = config.batch_size // process_count. Examples are one random segment per clip visit
  ('random') or every non-overlapping segment ('all'). The global example stream (shuffle,
  crops, augmentation) depends only on `seed`; process p takes the p-th block of
  `B` rows of every global batch, so the processes together read each epoch exactly once and
  their local batches k, concatenated in process order, are the 1-process batch k.
  """
  ds = train_batches(config, store, seed=seed, process=process)
  buffer = max(int(config.prefetch_buffer_size), 1)
  ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=buffer, prefetch_buffer_size=buffer))
  if config.num_workers > 0:
    _mark_absl_flags_parsed()
    ids = ids.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=int(config.num_workers), per_worker_buffer_size=buffer
        )
    )
  return TrainIterator(iter(ids))


def _mark_absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside `app.run` they are still unparsed."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# --- Evaluation -----------------------------------------------------------------------------


class _EvalClip:
  """Grain map: clip index -> (clip index, its (eval_segments, input_size) int16 segments)."""

  def __init__(self, config, store: Store, split: str, clips: np.ndarray):
    self.records, self.clips = store.clips(split), clips
    self.input_size, self.num_segments = int(config.input_size), int(config.eval_segments)

  def __call__(self, position: int) -> tuple[int, np.ndarray, np.ndarray]:
    clip = int(self.clips[position])
    record = self.records[clip]
    segments = segment_clip(record["audio"], self.input_size, self.num_segments)
    return clip, segments, record["labels"]


def _eval_clip_range(total: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous block of clips of one process; blocks differ in size by at most one."""
  return total * process_index // process_count, total * (process_index + 1) // process_count


def num_eval_batches(
    config: ml_collections.ConfigDict, store: Store, split: str,
    process: ProcessSlice | None = None, num_clips: int | None = None,
) -> int:
  """Batches every process yields for `split` (or `num_clips` of it; same on all processes)."""
  process = process or ProcessSlice.current()
  local_batch = process.local_batch(config.eval_batch_size, "eval_batch_size")
  num_clips = store.num_clips(split) if num_clips is None else num_clips
  most_clips = math.ceil(num_clips / process.count)
  return math.ceil(most_clips * config.eval_segments / local_batch)


class EvalBatches:
  """Re-iterable evaluation batches of one split for one process; `len()` is the batch count.

  Each batch is dict(audio=(B, input_size) float32, label=(B, num_classes) float32,
  clip_index=(B,) int32, mask=(B,) bool, weight=(B,) float32) with B =
  config.eval_batch_size // process_count; `weight` is each segment's weight in its clip's
  score (`segments.segment_weights` of `config.segment_pooling`, before the input scaling).
  Padding rows have mask False, zero audio, labels and weight, and clip_index -1.
  """

  def __init__(self, config, store: Store, split: str, process: ProcessSlice,
               clips: np.ndarray | None = None):
    store.check_matches(config)
    clips = np.arange(store.num_clips(split)) if clips is None else np.asarray(clips)
    self.batch_size = process.local_batch(config.eval_batch_size, "eval_batch_size")
    self.first, self.stop = _eval_clip_range(len(clips), process.index, process.count)
    self.num_batches = num_eval_batches(config, store, split, process, len(clips))
    self.input_size, self.num_classes = int(config.input_size), int(config.num_classes)
    self.reader = _EvalClip(config, store, split, clips)
    self.scaling = InputScaling.from_config(config)
    self.pooling = config.segment_pooling

  def __len__(self) -> int:
    return self.num_batches

  def _segments(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    ds = grain.MapDataset.range(self.first, self.stop).map(self.reader)
    buffer = max(2 * READ_THREADS, math.ceil(self.batch_size / self.reader.num_segments))
    yield from ds.to_iter_dataset(
        grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=buffer)
    )

  def _empty_batch(self) -> dict[str, np.ndarray]:
    return {
        "audio": np.zeros((self.batch_size, self.input_size), np.float32),
        "label": np.zeros((self.batch_size, self.num_classes), np.float32),
        "clip_index": np.full((self.batch_size,), -1, np.int32),
        "mask": np.zeros((self.batch_size,), bool),
        "weight": np.zeros((self.batch_size,), np.float32),
    }

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    batch, row, produced = self._empty_batch(), 0, 0
    for clip, segments, label_indices in self._segments():
      done = 0
      while done < len(segments):
        take = min(len(segments) - done, self.batch_size - row)
        rows = batch["audio"][row : row + take]
        to_float32(segments[done : done + take], out=rows)
        batch["weight"][row : row + take] = segment_weights(rows, self.pooling)
        batch["label"][row : row + take, label_indices] = 1.0
        batch["clip_index"][row : row + take] = clip
        batch["mask"][row : row + take] = True
        row, done = row + take, done + take
        if row == self.batch_size:
          self.scaling(batch["audio"])
          yield batch
          batch, row, produced = self._empty_batch(), 0, produced + 1
    if row:
      self.scaling(batch["audio"][:row])
      yield batch
      produced += 1
    for _ in range(self.num_batches - produced):
      yield self._empty_batch()


def create_eval_iterator(
    config: ml_collections.ConfigDict, store: Store, split: str,
    process: ProcessSlice | None = None, clips: np.ndarray | None = None,
) -> EvalBatches:
  """Fixed-shape evaluation batches of `split` (or of its `clips`) for this process.

  Every clip yields `config.eval_segments` segments (`segment_clip`), in clip order; process
  p covers a contiguous block of clips. All processes yield `len(...)` batches, padding
  with masked rows, so one jitted step over a global batch works on every host.
  """
  return EvalBatches(config, store, split, process or ProcessSlice.current(), clips)


def eval_sample(num_clips: int, max_batches: int, config: ml_collections.ConfigDict
                ) -> np.ndarray | None:
  """Sorted clip indices that fill about `max_batches` eval batches; None = the whole split.

  One clip drawn (seeded by config.seed) from each of that many equal blocks of the split,
  so a capped validation sees every part of a split that is sorted by class or by source,
  and the same clips at every evaluation (comparable numbers).
  """
  count = max(1, max_batches * int(config.eval_batch_size) // int(config.eval_segments))
  if not max_batches or count >= num_clips:
    return None
  edges = np.linspace(0, num_clips, count + 1)
  offsets = np.random.default_rng(int(config.seed)).random(count)
  return np.unique(np.floor(edges[:-1] + offsets * np.diff(edges)).astype(np.int64))
