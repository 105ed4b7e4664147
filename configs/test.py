"""Tiny widths and few steps, for the test suite and quick smoke runs on the demo data.

  python -m samplecnn_jax.prepare demo --out prepared/demo
  python -m samplecnn_jax.main --config=configs/test.py --workdir=/tmp/smoke
"""

from samplecnn_jax import config_base


def get_config(arg: str | None = None):
  config = config_base.base_config()
  config.dataset = "demo"  # The built-in synthetic dataset.
  config.data_dir = "prepared/demo"  # Tests point this at a temporary folder.
  config.sample_rate = 16000  # Same rate as the real datasets.
  config.input_size = 729  # 3^6 samples: 729 -> 243 -> 81 -> 27 -> 9 -> 3 -> 1.
  config.eval_segments = 2  # Segments averaged per clip.
  config.num_classes = 6  # Demo classes.
  config.label_type = "multi_label"  # Sigmoid outputs.
  config.metric = "f_score"  # Instance-based F1.
  config.model.num_blocks = 5  # Smallest trunk that still has 3 levels for Multi.
  config.model.base_width = 4  # Tiny widths keep compile and step time low.
  config.model.se_ratio = 0.5  # SE hidden width = channels / 2.
  config.batch_size = 8  # Global batch (divisible by 1, 2, 4 and 8 devices).
  config.eval_batch_size = 8  # Evaluation batch, in segments.
  config.optimizer = "sgd"  # The paper's optimiser.
  config.num_train_steps = 6  # A few steps.
  config.steps_per_eval = 3  # Validate twice.
  config.checkpoint_every_steps = 3  # Checkpoint at every validation.
  config.log_every_steps = 1  # Log every step.
  return config_base.finish(config, arg, default_variant="rese2_multi")
