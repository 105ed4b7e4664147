"""Speech Commands v0.01: 31 classes in training (30 words + silence), scored as 12 at test.

Paper settings (Table 1): 16 kHz, 16,000-sample input (1 s), 1 segment per clip, "8 blocks"
counting the strided front conv (num_blocks=7 here). Test accuracy maps the 20 non-command
words to `unknown`.

  python -m samplecnn_jax.prepare speech_commands --src RAW_DIR --out prepared/speech_commands
  python -m samplecnn_jax.main --config=configs/speech_commands.py --workdir=workdirs/sc
"""

from samplecnn_jax import config_base


def get_config(arg: str | None = None):
  config = config_base.base_config()
  config.dataset = "speech_commands"  # Prepared by `prepare speech_commands`.
  config.sample_rate = 16000  # Native rate of the dataset.
  config.input_size = 16000  # One second.
  config.eval_segments = 1  # One segment per 1-s clip (short clips zero-padded).
  config.num_classes = 31  # 30 words + silence in training; scored as 12 classes.
  config.label_type = "multi_class"  # Softmax outputs, cross-entropy.
  config.metric = "accuracy"  # 12-class argmax accuracy.
  config.augment.time_shift_ms = 100.0  # Random time shift of up to +-100 ms (TF recipe).
  config.augment.noise_prob = 0.8  # Background noise mixed into 80% of training clips.
  config.augment.noise_volume = 0.1  # At a volume drawn from U(0, 0.1).
  config.model.num_blocks = 7  # The paper's "8 blocks" minus the strided front conv.
  return config_base.finish(config, arg, default_variant="rese2_multi")
