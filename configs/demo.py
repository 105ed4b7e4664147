"""The built-in demo: a small ReSE-2-Multi on procedurally generated sound events.

Needs no download: `prepare demo` synthesises the data from a seed in seconds, and this
config trains to a clip-level F-score well above chance in a few minutes on a 2-core CPU.

  python -m samplecnn_jax.prepare demo --out prepared/demo
  python -m samplecnn_jax.main --config=configs/demo.py --workdir=workdirs/demo
"""

from samplecnn_jax import config_base


def get_config(arg: str | None = None):
  config = config_base.base_config()
  config.dataset = "demo"  # Prepared by `prepare demo`.
  config.data_dir = "prepared/demo"  # Where the README's command writes it.
  config.sample_rate = 16000  # Same rate as the real datasets.
  config.input_size = 6561  # 3^8 samples, 0.41 s.
  config.eval_segments = 4  # Segments averaged per demo clip.
  config.num_classes = 6  # Synthetic event classes.
  config.label_type = "multi_label"  # Several events can overlap in a clip.
  config.metric = "f_score"  # Instance-based F1, as for DCASE.
  config.model.num_blocks = 7  # 6561 -> 2187 -> ... -> 1.
  config.model.base_width = 16  # Small widths: a laptop-sized model.
  config.model.se_ratio = 0.5  # SE hidden width = channels / 2 at these widths.
  config.batch_size = 32  # Global batch.
  config.optimizer = "adam"  # Adam converges in a few hundred steps on the demo.
  config.learning_rate = 3e-3  # Adam step size.
  config.schedule = "cosine"  # Cosine decay over num_train_steps.
  config.num_train_steps = 600  # A few minutes on a 2-core CPU.
  config.steps_per_eval = 200  # Validate three times.
  config.checkpoint_every_steps = 200  # Checkpoint at every validation.
  config.log_every_steps = 50  # Log lines every 50 steps.
  return config_base.finish(config, arg, default_variant="rese2_multi")
