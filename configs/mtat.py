"""MagnaTagATune music auto-tagging: top-50 tags, multi-label, macro ROC-AUC.

Paper settings (Table 1): resampled to 16 kHz, 39,366-sample segments (2.46 s), 12 segments
per clip at test, "9 blocks" counting the strided front conv (num_blocks=8 here). The classic
SMC 2017 3^9 model is `--config.input_size=59049 --config.model.num_blocks=9`.

  python -m samplecnn_jax.prepare mtat --src RAW_DIR --out prepared/mtat
  python -m samplecnn_jax.main --config=configs/mtat.py:rese2multi --workdir=workdirs/mtat
  python -m samplecnn_jax.main --config=configs/mtat.py:samplecnn --workdir=workdirs/mtat_scnn
"""

from samplecnn_jax import config_base


def get_config(arg: str | None = None):
  config = config_base.base_config()
  config.dataset = "mtat"  # Prepared by `prepare mtat`.
  config.sample_rate = 16000  # Paper: the 16 kHz MTAT mp3s, not upsampled.
  config.input_size = 39366  # 2 * 3^9 samples, 2.46 s.
  config.eval_segments = 12  # Segments averaged per 29-s clip.
  config.num_classes = 50  # Top-50 tags.
  config.label_type = "multi_label"  # Sigmoid outputs, binary cross-entropy.
  config.metric = "roc_auc"  # Macro ROC-AUC over the 50 tags (PR-AUC reported too).
  config.model.num_blocks = 8  # The paper's "9 blocks" minus the strided front conv.
  return config_base.finish(config, arg, default_variant="rese2_multi")
