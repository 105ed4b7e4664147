"""Any small prepared store: the small-data recipe, with what depends on the data derived from it.

The fields set to 0 / "auto" / -1 below are filled from the store when the run starts
(`samplecnn_jax.adapt.resolve`, docs/small_data.md "Adaptive defaults"): classes, label type,
metric and rate from its manifest; segment length, depth and evaluation segments from its
clip durations; width and steps from its number of train clips and `budget_minutes`; mixup
from its label type. Any `--config.FIELD=VALUE` wins over the derived value.
WORKDIR/config.json records the values used.

  python -m samplecnn_jax.prepare csv --src labels.csv --out prepared/mine
  python -m samplecnn_jax.main --config=configs/small_data.py --workdir=workdirs/mine \
      --config.data_dir=prepared/mine --config.budget_minutes=15

`--config=configs/small_data.py:paper` derives the same data fields, width and steps but
trains with the paper's recipe (SGD + Nesterov, staged learning rate, no augmentation, mean
segment pooling): the comparison row of benchmarks/small_data.py.
"""

from samplecnn_jax import config_base


def get_config(arg: str | None = None):
  """`:paper` keeps the data-derived fields but trains with the paper's recipe (comparisons)."""
  words = [w.strip() for w in (arg or "").split(",") if w.strip()]
  paper = "paper" in words
  arg = ",".join(w for w in words if w != "paper")
  config = config_base.base_config()
  config.dataset = "csv"  # Any prepared store; the name only sets the default data_dir.
  config.data_dir = ""  # The prepared store: pass --config.data_dir=STORE.
  config.num_classes = 0  # 0 = the store's vocabulary size.
  config.label_type = "auto"  # auto = the store's label type.
  config.metric = "auto"  # auto = accuracy (multi_class) | f_score (multi_label).
  config.sample_rate = 0  # 0 = the store's sample rate.
  config.input_size = 0  # 0 = median train clip, clamped to 1 s (adapt.*_SEGMENT_SECONDS).
  config.eval_segments = 0  # 0 = enough segments to cover the longest valid/test clip (<= 16).
  config.model.num_blocks = 0  # 0 = the largest n with 3**(n+1) <= input_size.
  config.budget_minutes = 15.0  # Training budget on a 2-core CPU: decides width and steps.
  config = config_base.finish(config, arg, default_variant="rese2_multi")  # :samplecnn, :bf16.
  if not paper:
    config_base.apply_small_data(config)  # Augmentation, AdamW + cosine, BN recalibration, crops.
  config.model.base_width = 0  # 0 = the widest of 16/32 whose 100 epochs fit the budget.
  config.num_train_steps = 0  # 0 = 300 epochs of the train clips, or what the budget allows.
  config.steps_per_eval = 0  # 0 = num_train_steps // 10.
  config.checkpoint_every_steps = 0  # 0 = num_train_steps // 10.
  config.augment.noise_prob = 0.0  # No background-noise mixing (only Speech Commands has any).
  if not paper:
    config.augment.mixup_alpha = -1.0  # -1 = 0.2 for single-label stores, 0 for multi-label.
    config.segment_pooling = "rms"  # Clip score weighted by segment RMS: padding counts little.
    config.augment.time_shift_ms = 100.0  # Shift crops by up to +-100 ms (clips as long as a crop).
  return config
