"""The fields every run config has, with the paper's values as defaults, and their valid values.

The files in `configs/` start from `base_config()`, set their dataset's values, and pick a
model variant with `apply_variant`; `load_config` loads such a file the way
`--config=FILE.py[:ARG]` does, and `validate_config` answers a value the run cannot use
with one line naming the field and its valid values. A field at its `AUTO` value is derived
from the store by `adapt.resolve` before it is checked. This module does not read stores,
workdirs or devices: the checks that need them live where those are opened (`train.setup`,
`evaluate.open_store`).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import ml_collections

from samplecnn_jax import metrics, models, segments
from samplecnn_jax.datasets import common as datasets_common

# A mixed clip's labels: lambda-weighted (mix) or every event of both clips (union, multi-label).
MIXUP_LABELS = ("mix", "union")
# How a random training crop's start is drawn (`input_pipeline.rms_crop_start` for rms).
CROP_WEIGHTINGS = ("uniform", "rms")
# The valid values of the config's choice fields (model fields are checked by `models`).
CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("staged", "cosine", "constant"),
    "label_type": datasets_common.LABEL_TYPES,
    "metric": metrics.METRICS,
    "best_metric": (*metrics.METRICS, "loss"),
    "tracking": ("none", "mlflow", "wandb"),
    "segment_pooling": segments.POOLINGS,
    "augment.mixup_labels": MIXUP_LABELS,
    "augment.crop_weighting": CROP_WEIGHTINGS,
}
# Integer fields that count something and must be at least 1.
AT_LEAST_ONE = ("batch_size", "eval_batch_size", "num_train_steps", "steps_per_eval",
                "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "eval_segments", "num_stages", "patience", "input_size", "num_classes")
# Number fields where 0 means "off" or "none" and a negative value means nothing.
AT_LEAST_ZERO = ("augment.eq_db", "max_eval_batches", "bn_recalibration_batches", "warmup_steps",
                 "lr_decay", "weight_decay", "grad_clip_norm", "label_smoothing", "momentum")
# Fields whose value here means "derive it from the store" (configs/small_data.py);
# `samplecnn_jax.adapt.resolve` fills them before a run checks or uses its config.
AUTO = {"num_classes": 0, "label_type": "auto", "metric": "auto", "sample_rate": 0,
        "input_size": 0, "eval_segments": 0, "model.num_blocks": 0, "model.base_width": 0,
        "num_train_steps": 0, "steps_per_eval": 0, "checkpoint_every_steps": 0,
        "augment.mixup_alpha": -1.0}
# Probabilities and thresholds: in [0, 1].
UNIT_INTERVAL = ("f_score_threshold", "augment.noise_prob", "augment.speed_range",
                 "augment.polarity_prob", "augment.time_mask_prob", "augment.time_mask_fraction")


def model_config(input_size: ml_collections.FieldReference | int) -> ml_collections.ConfigDict:
  """Architecture fields (`config.model`); see `samplecnn_jax/models.py`."""
  m = ml_collections.ConfigDict()
  m.variant = "rese2_multi"  # Named variant this config was built from (see models.VARIANTS).
  m.block = "rese2"  # Block type: basic | se | res1 | res2 | rese1 | rese2.
  m.head = "gmp"  # Head: samplecnn (SMC 2017 1x1-conv head) | gmp (global max pool + 2 FC).
  m.multi = True  # Concatenate global max pools of the last 3 blocks (the "Multi" in ReSE-2-Multi).
  m.global_pool = "max"  # gmp head pooling over time: max (paper) | mean_max (also each level's mean).
  m.input_size = input_size  # Samples per input segment (linked to config.input_size).
  m.num_blocks = 8  # Pooled blocks after the strided front conv (the paper counts one more).
  m.base_width = 128  # Channels of the front conv and first blocks (x2 from block 3, x4 last).
  m.head_width = 0  # Hidden width of the head; 0 = reference (concat width, or last width).
  m.se_ratio = 16.0  # SE hidden width = se_ratio * channels (16: ICASSP 2018; 0.125: JSTSP 2019).
  m.block_dropout = 0.2  # Dropout between the two convs of Res-2/ReSE-2 blocks.
  m.head_dropout = 0.5  # Dropout before the output layer.
  m.front_padding = "valid"  # Front conv padding: valid (ICASSP 2018 code) | same (JSTSP 2019).
  m.bn_momentum = 0.99  # BatchNorm running-average momentum (Keras default).
  m.bn_epsilon = 1e-3  # BatchNorm epsilon (Keras default; Flax's default is 1e-5).
  m.conv_init = "he_uniform"  # Conv kernel initialiser: he_uniform | glorot_uniform | lecun_normal.
  m.dtype = "float32"  # Compute dtype: float32 | bfloat16 | float16 (parameters stay float32).
  m.remat = False  # Rematerialise block activations in the backward pass (less memory, more FLOPs).
  m.conv_impl = "xla"  # Conv kernels: xla (lax.conv) | matmul (im2col GEMM); same params/results.
  return m


def base_config() -> ml_collections.ConfigDict:
  """All fields, set to the paper's DCASE 2017 values; dataset configs override a few."""
  c = ml_collections.ConfigDict()

  # --- Data -------------------------------------------------------------------------------
  c.dataset = "dcase2017"  # Prepared dataset name: mtat | speech_commands | dcase2017 | folder | csv | demo.
  c.data_dir = ""  # Prepared store (output of samplecnn_jax.prepare); '' = ./prepared/<dataset>.
  c.sample_rate = 16000  # Sample rate of the prepared audio, Hz.
  c.input_size = 19683  # Samples per segment: the model input length.
  c.eval_segments = 9  # Segments per clip at evaluation, spread evenly over the clip.
  c.segment_pooling = "mean"  # Clip score from its segments: mean (paper) | rms (weighted by segment RMS).
  c.train_segments = "all"  # Training examples: all (every segment, as the reference) | random (one crop per clip visit).
  c.num_classes = 17  # Output units in training (Speech Commands: 31, scored as 12).
  c.label_type = "multi_label"  # multi_label (sigmoid + BCE) | multi_class (softmax + CE).
  c.metric = "f_score"  # Headline metric: roc_auc | pr_auc | accuracy | f_score.
  c.best_metric = "loss"  # Validation number that picks the best checkpoint (paper: loss).
  c.f_score_threshold = 0.5  # Decision threshold for F-scores (DCASE instance-based F1).
  c.tune_thresholds = False  # Also report F1 with per-class thresholds tuned on validation.
  c.standardize = False  # Standardise waveforms with audio_mean / audio_std.
  c.audio_mean = 0.0  # Mean subtracted when standardize=True.
  c.audio_std = 1.0  # Std divided by when standardize=True.
  c.normalize_rms = 0.0  # Scale each segment to this RMS (train, eval, predict); 0 = off.
  c.train_split = "train"  # Split to train on.
  c.eval_split = "valid"  # Split to validate on during training.
  c.test_split = "test"  # Split scored with the best checkpoint at the end.
  c.num_workers = 0  # Grain worker processes per host (0 = read in the main process).
  c.prefetch_buffer_size = 4  # Batches each Grain worker prepares ahead.
  c.augment = ml_collections.ConfigDict()  # Training-time waveform augmentation.
  c.augment.time_shift_ms = 0.0  # Max random time shift in training, ms (Speech Commands: 100).
  c.augment.noise_prob = 0.0  # Probability of mixing background noise in training (SC: 0.8).
  c.augment.noise_volume = 0.1  # Max volume of the mixed background noise.
  c.augment.gain_db = 0.0  # Random gain drawn from U(-gain_db, +gain_db) dB per clip; 0 = off.
  c.augment.polarity_prob = 0.0  # Probability of inverting a clip's polarity (x -> -x).
  c.augment.time_mask_prob = 0.0  # Probability of zeroing one random span of a clip.
  c.augment.time_mask_fraction = 0.1  # Max length of that span, as a fraction of the input.
  c.augment.eq_db = 0.0  # Random equaliser: smooth gain curve within +-eq_db dB over 8 log-spaced bands; 0 = off.
  c.augment.crop_weighting = "uniform"  # Random crop start: uniform (paper) | rms (louder crops likelier).
  c.augment.speed_range = 0.0  # Speed (and pitch) change by a factor from U(1-r, 1+r) per crop; 0 = off.
  c.augment.mixup_alpha = 0.0  # Mixup within each batch, lambda ~ Beta(alpha, alpha); 0 = off.
  c.augment.mixup_labels = "mix"  # Mixed labels: mix (lambda-weighted) | union (multi_label only).
  c.label_smoothing = 0.0  # Training-loss label smoothing (multi_class: eps/K; multi_label: toward 0.5).

  # --- Model ------------------------------------------------------------------------------
  c.model = model_config(c.get_ref("input_size"))  # Architecture (samplecnn_jax.models).

  # --- Optimisation -----------------------------------------------------------------------
  c.seed = 0  # Seed for initialisation, dropout and data order.
  c.batch_size = 23  # Global batch size (all devices, all hosts).
  c.eval_batch_size = 64  # Global batch size for evaluation, in segments.
  c.optimizer = "sgd"  # sgd (Nesterov momentum, the paper's) | adam | adamw.
  c.learning_rate = 0.01  # Initial learning rate of stage 1.
  c.momentum = 0.9  # SGD momentum.
  c.nesterov = True  # Use Nesterov momentum.
  c.lr_decay = 1e-6  # Keras per-step decay: lr_t = lr / (1 + lr_decay * t).
  c.schedule = "staged"  # staged (paper: x0.2 on plateau) | cosine | constant.
  c.num_stages = 5  # Stages of the staged schedule (lr 0.01, 0.002, 4e-4, 8e-5, 1.6e-5).
  c.stage_lr_factor = 0.2  # Learning-rate factor between stages.
  c.patience = 2  # Evaluations without validation-loss improvement that end a stage.
  c.warmup_steps = 0  # Linear warm-up steps (cosine schedule).
  c.weight_decay = 0.0  # Weight decay (adamw) / L2 (sgd); the paper uses none.
  c.grad_clip_norm = 0.0  # Clip gradients to this global norm; 0 = off.
  c.num_train_steps = 100_000  # Upper bound on training steps over all stages.
  c.budget_minutes = 15.0  # Training budget, minutes on a 2-core CPU; used where base_width or num_train_steps is 0 (adapt).
  c.steps_per_eval = 2000  # Training steps between validation passes.
  c.max_eval_batches = 0  # Validate on a seeded, even sample of clips filling this many batches; 0 = all.
  c.log_every_steps = 100  # Training steps between log lines / TensorBoard scalars.
  c.checkpoint_every_steps = 2000  # Training steps between (latest) checkpoints.
  c.keep_checkpoints = 2  # Latest checkpoints kept (the best one is kept in addition).
  c.bn_recalibration_batches = 0  # Recompute BN statistics on this many train batches before each eval; 0 = paper.

  # --- Transfer (samplecnn_jax/transfer.py, docs/transfer.md) ------------------------------
  c.init_from = ""  # Workdir whose trained weights start this run (fine-tuning); '' = from scratch.
  c.init_from_checkpoint = "best"  # Checkpoint of init_from to load: best | latest.
  c.trainable = "all"  # What trains: all | head (frozen trunk: no updates, fixed BN statistics).
  c.trunk_lr_factor = 1.0  # Learning-rate factor of the trunk when trainable=all (1.0 = the paper's).

  # --- Tracking (samplecnn_jax/tracking.py, docs/reporting.md) ----------------------------
  c.tracking = "none"  # Experiment tracking: none | mlflow (file store WORKDIR/mlruns) | wandb (WORKDIR/wandb); pip install -e '.[tracking]'.

  # --- Devices ----------------------------------------------------------------------------
  c.mesh_shape = (-1,)  # Device mesh shape; -1 = all devices on the data axis.
  c.mesh_axes = ("data",)  # Mesh axis names; the batch is split over 'data'.
  return c


def apply_variant(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets block / head / multi from a named variant such as `samplecnn` or `rese2_multi`."""
  variant = models.get_variant(name)
  config.model.variant = name
  config.model.block = variant.block
  config.model.head = variant.head
  config.model.multi = variant.multi
  return config


ARG_WORDS = ("bf16", "small_data")  # Config-arg words that are not variant names.


def apply_small_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The small-dataset recipe (docs/small_data.md): augmentation, Adam + cosine, BN recalibration.

  For a few hundred to a few thousand clips. Values chosen by benchmarks/small_data.py on the
  Speech Commands v0.02 excerpt; override any of them with `--config.field=value`.
  """
  config.augment.gain_db = 6.0
  config.augment.polarity_prob = 0.5
  config.augment.time_mask_prob = 0.5
  config.augment.time_mask_fraction = 0.1
  config.augment.mixup_alpha = 0.2
  config.label_smoothing = 0.1
  config.optimizer = "adamw"
  config.learning_rate = 1e-3
  config.weight_decay = 1e-4
  config.schedule = "cosine"
  config.warmup_steps = 50
  config.num_train_steps = 2000  # About 10 minutes on 2 CPU cores at base_width 16.
  config.steps_per_eval = 200
  config.checkpoint_every_steps = 200
  config.model.base_width = 16  # Narrow: 0.35M parameters for hundreds of clips.
  config.batch_size = 32
  config.bn_recalibration_batches = 8
  config.train_segments = "random"
  return config


def parse_arg(arg: str | None, default_variant: str) -> tuple[str, set[str]]:
  """Splits a `--config=file.py:ARG` argument into a variant name and flags.

  ARG is a comma-separated list such as `samplecnn` or `rese2_multi,bf16`. Known flags:
  `bf16` (bfloat16 compute), `small_data` (the measured small-dataset recipe, see
  `apply_small_data`). Anything else must be a variant name.
  """
  variant, flags = default_variant, set()
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    if part in ARG_WORDS:
      flags.add(part)
    elif part in models.VARIANTS:
      variant = part
    else:
      raise ValueError(
          f"--config=FILE.py:{arg}: {part!r} is neither a model variant nor one of "
          f"{', '.join(ARG_WORDS)}. Valid variants: {', '.join(sorted(models.VARIANTS))} "
          f"(e.g. --config=configs/mtat.py:samplecnn or :rese2_multi,bf16)")
  return variant, flags


def finish(config: ml_collections.ConfigDict, arg: str | None, default_variant: str):
  """Applies the `:ARG` of a config file and returns the config."""
  variant, flags = parse_arg(arg, default_variant)
  apply_variant(config, variant)
  if "bf16" in flags:
    config.model.dtype = "bfloat16"
  if "small_data" in flags:
    apply_small_data(config)
  return config


# --- Loading and checking -------------------------------------------------------------------


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """Loads a config file the way `--config=FILE.py[:ARG]` does: `get_config(ARG or None)`.

  The one loader of config files for the library (`workdir_files.read_config`), the tests and the
  benchmarks. A missing file or an unknown ARG raises one line that names the fix.
  """
  file, _, arg = str(spec).partition(":")
  path = Path(file)
  if not path.is_file():
    raise FileNotFoundError(
        f"Config file {file} does not exist. Pass --config=configs/NAME.py[:ARG], one of "
        f"the files in configs/ or a copy of one.")
  module_spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def get_field(config: ml_collections.ConfigDict, name: str) -> Any:
  """The value of a dotted field name such as `augment.noise_prob`."""
  value = config
  for part in name.split("."):
    value = value[part]
  return value


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, in one line naming the field and the fix, on a value no run can use.

  Only the values themselves are checked here (no store, workdir or device is looked at),
  before anything runs or is written, so that `--config.learning_rate=-1` fails at once.
  Runs check the config after `adapt.resolve` filled its `AUTO` fields from the store.
  """
  for field, auto in AUTO.items():
    if get_field(config, field) == auto:
      raise ValueError(
          f"config.{field}={auto!r} means 'derive it from the store' (samplecnn_jax.adapt."
          f"resolve), which was not done here: set --config.{field} to a concrete value.")
  for field, valid in CHOICES.items():
    if get_field(config, field) not in valid:
      raise ValueError(
          f"config.{field}={get_field(config, field)!r} is not valid; choose one of: "
          f"{', '.join(valid)} (--config.{field}=...)."
      )
  if config.augment.mixup_labels == "union" and config.label_type != "multi_label":
    raise ValueError(
        "config.augment.mixup_labels=union gives a mixed clip both clips' labels, which only "
        "a multi_label run can learn: use --config.augment.mixup_labels=mix for "
        f"{config.label_type} runs.")
  if not config.learning_rate > 0:
    raise ValueError(
        f"config.learning_rate must be > 0, got {config.learning_rate}: set "
        f"--config.learning_rate to a positive value (to train only part of the model use "
        f"--config.trainable=head; to score a run use --mode=eval)."
    )
  for field in AT_LEAST_ONE:
    if not config[field] >= 1:
      raise ValueError(f"config.{field} must be >= 1, got {config[field]}: set "
                       f"--config.{field} to a positive integer.")
  for field in AT_LEAST_ZERO:
    if not config[field] >= 0:
      raise ValueError(f"config.{field} must be >= 0 (0 = off), got {config[field]}: set "
                       f"--config.{field}=0 or a positive value.")
  for field in UNIT_INTERVAL:
    value = get_field(config, field)
    if not (math.isfinite(value) and 0 <= value <= 1):
      raise ValueError(f"config.{field} must be in [0, 1], got {value}: set "
                       f"--config.{field} to a value between 0 and 1.")
  if not config.stage_lr_factor > 0:
    raise ValueError(f"config.stage_lr_factor must be > 0, got {config.stage_lr_factor}: set "
                     "--config.stage_lr_factor (the paper's is 0.2).")
