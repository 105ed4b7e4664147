"""Fills the config fields that say "from the store": `resolve(config, store)`.

A field holding its `config_base.AUTO` value (0, or "auto" for label_type and metric; the
values configs/small_data.py sets) is derived from the prepared store a run trains on: the
classes, label type, metric and rate from its manifest; the segment length, the model depth
and the evaluation segments from its clip durations; the width and the steps from its number
of train clips and `config.budget_minutes`. A value the user set always wins. Each rule is a
pure function of numbers (`segment_samples`, `blocks_for`, `eval_segments_for`,
`width_and_steps`, ...) returning a `Derived` value with the reason that is logged, and its
constants are the module constants below, so that tuning them is a one-line change.

The rules never measure anything (no clocks, no devices): the same store and config give the
same values on every machine, so every process of a multi-host run and a resumed run agree.
What is not here: checking the values (`config_base.validate_config`, `Store.check_matches`)
and opening the store (`evaluate.open_store`).
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import ml_collections
import numpy as np

from samplecnn_jax import config_base, models, segments
from samplecnn_jax import store as store_lib

# --- The rules' constants --------------------------------------------------------------------

MIN_SEGMENT_SECONDS = 1.0  # Shortest segment (model input) derived from the clips, s.
MAX_SEGMENT_SECONDS = 1.0  # Longest segment derived from the clips, s (2 s: no better, twice the cost).
MAX_EVAL_SEGMENTS = 16  # Most evaluation segments per clip; longer clips are sampled.
# Seconds per training step at REFERENCE_BATCH_SIZE and REFERENCE_INPUT_SIZE on the reference
# machine (a 2-core CPU), by model.base_width; other sizes scale linearly, other widths are
# interpolated log-log.
SECONDS_PER_STEP = {16: 0.17, 32: 0.40, 64: 1.10}
REFERENCE_BATCH_SIZE = 32  # Batch size of SECONDS_PER_STEP.
REFERENCE_INPUT_SIZE = 16000  # Input size of SECONDS_PER_STEP, samples.
WIDTHS = (16, 32)  # The base widths the budget rule chooses from (64+: not measured).
MIN_EPOCHS = 100  # A width is chosen only if this many passes over the train clips fit.
TARGET_EPOCHS = 300  # Passes over the train clips (one random crop per visit) worth training.
EVAL_SHARE = 0.1  # Share of the budget left for validations and the test scoring.
MIN_STEPS = 200  # Fewest training steps derived.
EVALS = 10  # Validations (and latest checkpoints) per run when their cadence is derived.
MIXUP_ALPHA = 0.2  # Mixup of single-label stores (multi-label ones: off, see mixup_alpha_for).


class Derived(NamedTuple):
  """A derived field value and why (the text of its log line)."""

  value: int | str
  reason: str


# --- The rules -------------------------------------------------------------------------------


def metric_for(label_type: str) -> Derived:
  """The headline metric of a label type: accuracy (multi_class) or F-score (multi_label)."""
  metric = "accuracy" if label_type == "multi_class" else "f_score"
  return Derived(metric, f"label_type {label_type}")


def mixup_alpha_for(label_type: str) -> Derived:
  """Mixup for single-label stores only.

  Mixing a multi-label clip's targets by lambda (>= 0.5) gives every event of the mixed-in
  clip a target below the 0.5 decision threshold: the demo (seed 0, 5-minute budget) scored
  an F-score of 0.915 with it, 0.935 labelling the mix with both clips' events
  (`augment.mixup_labels=union`) and 0.954 without mixup.
  """
  if label_type == "multi_label":
    return Derived(0.0, "multi-label store: mixup's soft targets hide mixed-in events")
  return Derived(MIXUP_ALPHA, f"label_type {label_type}")


def segment_samples(train_lengths: Sequence[int], sample_rate: int) -> Derived:
  """The input size: the median train clip, clamped to [MIN, MAX]_SEGMENT_SECONDS, in samples.

  A segment as long as a typical clip sees all of most clips in one crop; the clamp keeps
  short clips (1-s words) at a length the model can pool and long ones (songs) affordable.
  """
  if len(train_lengths) == 0:
    raise ValueError("no train clips to derive the input size from")
  median = float(np.median(np.asarray(train_lengths, np.float64)))
  low = round(MIN_SEGMENT_SECONDS * sample_rate)
  high = round(MAX_SEGMENT_SECONDS * sample_rate)
  size = int(min(max(round(median), low), high))
  note = ("" if low <= round(median) <= high else
          f", raised to {MIN_SEGMENT_SECONDS} s" if round(median) < low else
          f", capped at {MAX_SEGMENT_SECONDS} s")
  return Derived(size, f"median train clip {median / sample_rate:.1f} s{note}")


def blocks_for(input_size: int, front_padding: str = "valid") -> Derived:
  """The deepest trunk for `input_size`: the largest n with 3**(n+1) <= input_size."""
  n = 0
  while 3 ** (n + 2) <= input_size:
    n += 1
  if n < 1:
    raise ValueError(f"input_size={input_size} is too short for any block (needs >= 9)")
  models.check_input_size(input_size, n, front_padding)
  return Derived(n, f"largest n with 3**(n+1) <= {input_size}")


def eval_segments_for(longest: int, input_size: int, sample_rate: int) -> Derived:
  """Segments that cover the longest clip whole (`segments.cover_count`), at most
  MAX_EVAL_SEGMENTS (then the longest clips are sampled, not covered)."""
  needed = segments.cover_count(longest, input_size)
  seconds = f"{longest / sample_rate:.1f} s"
  if needed > MAX_EVAL_SEGMENTS:
    return Derived(MAX_EVAL_SEGMENTS,
                   f"capped at MAX_EVAL_SEGMENTS={MAX_EVAL_SEGMENTS}: covering the longest "
                   f"valid/test clip ({seconds}) would take {needed}, so long clips are "
                   f"sampled, not covered")
  return Derived(needed, f"covers the longest valid/test clip, {seconds}, in "
                         f"{input_size / sample_rate:g}-s segments")


def step_seconds(width: int, input_size: int, batch_size: int) -> float:
  """Seconds per training step on the reference machine, from `SECONDS_PER_STEP`."""
  widths = sorted(SECONDS_PER_STEP)
  i = min(max(bisect.bisect_left(widths, width), 1), len(widths) - 1)
  low, high = widths[i - 1], widths[i]
  exponent = math.log(SECONDS_PER_STEP[high] / SECONDS_PER_STEP[low]) / math.log(high / low)
  per_step = SECONDS_PER_STEP[low] * (width / low) ** exponent
  return per_step * (input_size / REFERENCE_INPUT_SIZE) * (batch_size / REFERENCE_BATCH_SIZE)


def budget_steps(budget_minutes: float, width: int, input_size: int, batch_size: int) -> int:
  """Training steps that fit the budget at `width`, EVAL_SHARE of it left for evaluations."""
  seconds = budget_minutes * 60.0 * (1.0 - EVAL_SHARE)
  return int(seconds / step_seconds(width, input_size, batch_size))


def epoch_steps(num_clips: int, batch_size: int, epochs: int = TARGET_EPOCHS) -> int:
  """Steps of `epochs` passes over `num_clips` clips (one random crop per clip visit)."""
  return math.ceil(epochs * num_clips / batch_size)


def width_and_steps(num_clips: int, budget_minutes: float, input_size: int, batch_size: int,
                    width: int = 0, steps: int = 0) -> tuple[Derived, Derived]:
  """`(model.base_width, num_train_steps)` for `num_clips` train clips and the budget.

  The widest of `WIDTHS` whose steps (the user's, else MIN_EPOCHS epochs) fit the budget,
  else the narrowest; then TARGET_EPOCHS epochs, or fewer if the budget ends first, and at
  least MIN_STEPS. A nonzero `width` or `steps` is the user's and is returned as it is.
  Epochs before width: over 3 seeds at 5 minutes, width 32 at 65 epochs lost 5.3 points to
  width 16 at 153 on the speech excerpt and tied on the demo (18 epochs against 42), and at
  120 epochs on the instruments excerpt width 32 tied with width 16 at 282
  (docs/small_data.md "Ablations with 3 seeds").
  """
  if not budget_minutes > 0:
    raise ValueError(f"config.budget_minutes must be > 0, got {budget_minutes}: set "
                     f"--config.budget_minutes=N (or --config.model.base_width and "
                     f"--config.num_train_steps).")
  target = epoch_steps(num_clips, batch_size)
  minimum = epoch_steps(num_clips, batch_size, MIN_EPOCHS)
  epochs = f"{TARGET_EPOCHS} epochs of {num_clips} train clips at batch {batch_size}"
  widths = "/".join(str(w) for w in WIDTHS)
  width_reason = "set"
  if width == 0:
    need = steps or minimum
    what = f"{steps} steps" if steps else f"{minimum} steps ({MIN_EPOCHS} epochs)"
    fitting = [w for w in WIDTHS
               if budget_steps(budget_minutes, w, input_size, batch_size) >= need]
    width = max(fitting) if fitting else min(WIDTHS)
    width_reason = (f"the widest of {widths} whose {what} fit {budget_minutes:g} min"
                    if fitting else f"no width of {widths} fits {what} in {budget_minutes:g} "
                                    f"min: the narrowest")
    width_reason += f", ~{step_seconds(width, input_size, batch_size):.2f} s/step"
  steps_reason = "set"
  if steps == 0:
    affordable = budget_steps(budget_minutes, width, input_size, batch_size)
    steps = max(MIN_STEPS, min(affordable, target))
    steps_reason = (f"{epochs}" if steps == target else
                    f"raised to MIN_STEPS={MIN_STEPS}" if steps == MIN_STEPS else
                    f"what {budget_minutes:g} min allow at width {width}; {epochs} would "
                    f"take {target}")
  return Derived(width, width_reason), Derived(steps, steps_reason)


# --- Resolving a config ----------------------------------------------------------------------


def auto_fields(config: ml_collections.ConfigDict) -> list[str]:
  """The fields of `config` that hold their auto value (`config_base.AUTO`)."""
  return [field for field, auto in config_base.AUTO.items()
          if config_base.get_field(config, field) == auto]


def resolve(config: ml_collections.ConfigDict,
            store: store_lib.Store) -> ml_collections.ConfigDict:
  """A copy of `config` with its auto fields derived from `store` (`config` is not changed).

  Each derived value is logged once, with its reason. A config without auto fields comes
  back equal to itself, and the store is then not read.
  """
  resolved = copy.deepcopy(config)
  auto = set(auto_fields(config))
  if not auto:
    return resolved
  manifest = store.manifest

  def derive(field: str, derived: Derived) -> None:
    _set(resolved, field, derived.value)
    logging.info("%s=%s (%s)", field, derived.value, derived.reason)

  if "num_classes" in auto:
    derive("num_classes", Derived(len(manifest.vocabulary), "the store's vocabulary"))
  if "label_type" in auto:
    derive("label_type", Derived(manifest.label_type, "the store's label type"))
  if "metric" in auto:
    derive("metric", metric_for(resolved.label_type))
  if "augment.mixup_alpha" in auto:
    derive("augment.mixup_alpha", mixup_alpha_for(resolved.label_type))
  if "sample_rate" in auto:
    derive("sample_rate", Derived(manifest.sample_rate, "the store's audio"))
  rate = manifest.sample_rate  # Clip lengths are in the store's samples.
  if "input_size" in auto:
    derive("input_size", segment_samples(_train_lengths(config, store), rate))
    resolved.model.input_size = resolved.input_size  # Linked in base_config; else set here.
  if "model.num_blocks" in auto:
    derive("model.num_blocks", blocks_for(resolved.input_size, resolved.model.front_padding))
  if "eval_segments" in auto:
    lengths = [store.clip_lengths(split) for split in (config.eval_split, config.test_split)
               if store.manifest.splits.get(split) and store.num_clips(split)]
    longest = max((int(part.max()) for part in lengths), default=resolved.input_size)
    derived = eval_segments_for(longest, resolved.input_size, rate)
    if derived.value < segments.cover_count(longest, resolved.input_size):
      logging.warning("eval_segments=%s (%s)", derived.value, derived.reason)
      _set(resolved, "eval_segments", derived.value)
    else:
      derive("eval_segments", derived)
  if auto & {"model.base_width", "num_train_steps"}:
    width, steps = width_and_steps(
        store.num_clips(config.train_split), float(config.budget_minutes),
        resolved.input_size, resolved.batch_size, width=resolved.model.base_width,
        steps=resolved.num_train_steps)
    if "model.base_width" in auto:
      derive("model.base_width", width)
    if "num_train_steps" in auto:
      derive("num_train_steps", steps)
  for field in ("steps_per_eval", "checkpoint_every_steps"):
    if field in auto:
      derive(field, Derived(max(1, resolved.num_train_steps // EVALS),
                            f"num_train_steps // {EVALS}"))
  return resolved


def _train_lengths(config: ml_collections.ConfigDict, store: store_lib.Store) -> np.ndarray:
  split = config.train_split
  if split not in store.manifest.splits or not store.num_clips(split):
    raise ValueError(
        f"config.input_size=0 is derived from the clips of the train split {split!r}, but the "
        f"store {store.path} has none (it has: {', '.join(sorted(store.manifest.splits))}): "
        f"set --config.train_split, or --config.input_size=N samples.")
  return store.clip_lengths(split)


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
  parent, _, name = field.rpartition(".")
  (config_base.get_field(config, parent) if parent else config)[name] = value
