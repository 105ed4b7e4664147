"""DCASE 2017 Task 4, subtask A (audio tagging): 17 sound events, multi-label, instance-based F1.

Paper settings (Table 1): 16 kHz, 19,683-sample segments (1.23 s), 9 segments per clip at
test, "8 blocks" counting the strided front conv (num_blocks=7 here).

  python -m samplecnn_jax.prepare dcase2017 --src RAW_DIR --out prepared/dcase2017
  python -m samplecnn_jax.main --config=configs/dcase.py --workdir=workdirs/dcase
  python -m samplecnn_jax.main --config=configs/dcase.py:samplecnn --workdir=workdirs/dcase_scnn
"""

from samplecnn_jax import config_base


def get_config(arg: str | None = None):
  config = config_base.base_config()
  config.dataset = "dcase2017"  # Prepared by `prepare dcase2017`.
  config.sample_rate = 16000  # Paper: resampled from 44.1 kHz to 16 kHz.
  config.input_size = 19683  # 3^9 samples, 1.23 s.
  config.eval_segments = 9  # Segments averaged per 10-s clip.
  config.num_classes = 17  # Sound events (vehicle and warning sounds).
  config.label_type = "multi_label"  # Sigmoid outputs, binary cross-entropy.
  config.metric = "f_score"  # Official instance-based (micro) F1.
  config.model.num_blocks = 7  # The paper's "8 blocks" minus the strided front conv.
  return config_base.finish(config, arg, default_variant="rese2_multi")
