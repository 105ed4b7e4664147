"""Tests for configs/: every file loads, variants and --config.field overrides work."""

from __future__ import annotations

import pytest
from absl import flags
from conftest import REPO, load_config
from ml_collections import config_flags

from samplecnn_jax import config_base, metrics, models

# Paper Table 1 (num_blocks excludes the strided front conv, the paper counts it).
PAPER = {
    "mtat": dict(input_size=39366, eval_segments=12, num_blocks=8, num_classes=50,
                 label_type="multi_label", metric="roc_auc"),
    "speech_commands": dict(input_size=16000, eval_segments=1, num_blocks=7, num_classes=31,
                            label_type="multi_class", metric="accuracy"),
    "dcase": dict(input_size=19683, eval_segments=9, num_blocks=7, num_classes=17,
                  label_type="multi_label", metric="f_score"),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_dataset_configs_match_paper_table_1(name):
  config = load_config(name)
  expected = PAPER[name]
  assert config.sample_rate == 16000
  assert config.model.num_blocks == expected.pop("num_blocks")
  for key, value in expected.items():
    assert config[key] == value, key
  assert config.model.input_size == config.input_size
  assert config.label_type in config_base.CHOICES["label_type"] and config.metric in metrics.METRICS


def test_paper_training_recipe_is_the_default():
  config = load_config("dcase")
  assert (config.optimizer, config.learning_rate, config.momentum, config.nesterov) == (
      "sgd", 0.01, 0.9, True)
  assert (config.batch_size, config.lr_decay, config.num_stages, config.stage_lr_factor) == (
      23, 1e-6, 5, 0.2)
  assert config.model.se_ratio == 16.0


@pytest.mark.parametrize("name", ["mtat", "speech_commands", "dcase", "demo", "test"])
def test_every_config_builds_its_model(name):
  config = load_config(name)
  assert isinstance(models.create_model(config.model, config.num_classes), models.SampleLevelCNN)


@pytest.mark.parametrize("arg, block, multi, head", [
    ("samplecnn", "basic", False, "samplecnn"),
    ("se_multi", "se", True, "gmp"),
    ("res2_multi", "res2", True, "gmp"),
    ("rese2multi", "rese2", True, "gmp"),
    ("rese1", "rese1", False, "gmp"),
])
def test_variant_argument_selects_architecture(arg, block, multi, head):
  config = load_config("mtat", arg)
  assert (config.model.block, config.model.multi, config.model.head) == (block, multi, head)


def test_bf16_flag_in_config_argument():
  assert load_config("dcase", "samplecnn,bf16").model.dtype == "bfloat16"


def test_command_line_overrides_with_config_flags():
  """`--config=configs/mtat.py:samplecnn --config.input_size=59049` as main.py parses it."""
  argv = [
      "prog",
      f"--config={REPO / 'configs' / 'mtat.py'}:samplecnn",
      "--config.input_size=59049",
      "--config.model.num_blocks=9",
      "--config.model.se_ratio=0.125",
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  config = values.config
  assert config.model.block == "basic" and config.input_size == 59049
  assert config.model.input_size == 59049, "model.input_size follows config.input_size"
  assert config.model.num_blocks == 9 and config.model.se_ratio == 0.125


def test_config_fields_each_have_a_comment():
  """One field per line, each with a short comment (DEVELOPERS.md)."""
  files = {path: ("config.",) for path in (REPO / "configs").glob("*.py")}
  files[REPO / "samplecnn_jax" / "config_base.py"] = ("c.", "m.")  # Not apply_variant's code.
  for path, prefixes in files.items():
    for line in path.read_text().splitlines():
      stripped = line.strip()
      if stripped.startswith(prefixes) and " = " in stripped:
        assert "#" in stripped, f"{path.name}: field without a comment: {stripped}"


def test_small_data_argument_turns_on_the_recipe_and_combines_with_a_variant():
  paper = load_config("speech_commands")
  assert paper.bn_recalibration_batches == 0 and paper.augment.mixup_alpha == 0
  assert paper.augment.gain_db == 0 and paper.label_smoothing == 0 and paper.optimizer == "sgd"
  small = load_config("speech_commands", "small_data")
  assert small.bn_recalibration_batches > 0 and small.augment.mixup_alpha > 0
  assert small.optimizer == "adamw" and small.schedule == "cosine"
  assert small.model.block == paper.model.block
  assert small.model.base_width < paper.model.base_width  # Narrow for hundreds of clips.
  assert small.normalize_rms == paper.normalize_rms == 0  # Measured: within noise (docs).
  both = load_config("speech_commands", "samplecnn,small_data")
  assert both.model.variant == "samplecnn" and both.augment.gain_db == small.augment.gain_db
  assert config_base.parse_arg("rese2_multi,small_data,bf16", "samplecnn") == (
      "rese2_multi", {"small_data", "bf16"})
  with pytest.raises(ValueError):
    config_base.parse_arg("small_dta", "samplecnn")


@pytest.mark.parametrize("name", ["mtat", "speech_commands", "dcase", "demo", "test"])
def test_every_config_passes_validation(name):
  config_base.validate_config(load_config(name))
  config_base.validate_config(load_config(name, "small_data"))


@pytest.mark.parametrize("field, value, fix", [
    ("learning_rate", -1.0, "learning_rate must be > 0"),
    ("batch_size", 0, "--config.batch_size"),
    ("eval_batch_size", -8, "--config.eval_batch_size"),
    ("num_train_steps", 0, "--config.num_train_steps"),
    ("log_every_steps", 0, "--config.log_every_steps"),
    ("checkpoint_every_steps", 0, "--config.checkpoint_every_steps"),
    ("eval_segments", 0, "--config.eval_segments"),
    ("warmup_steps", -1, "--config.warmup_steps"),
    ("f_score_threshold", 1.5, "--config.f_score_threshold"),
    ("augment.noise_prob", -0.1, "--config.augment.noise_prob"),
    ("optimizer", "rmsprop", "choose one of: sgd, adam, adamw"),
    ("metric", "loss", "choose one of: roc_auc, pr_auc, accuracy, f_score"),
    ("augment.crop_weighting", "loud", "choose one of: uniform, rms"),
])
def test_invalid_values_are_one_line_naming_the_field(field, value, fix):
  config = load_config("test")
  parent, _, name = field.rpartition(".")
  (config[parent] if parent else config)[name] = value
  with pytest.raises(ValueError, match=f"config.{field}") as error:
    config_base.validate_config(config)
  assert fix in str(error.value) and "\n" not in str(error.value)


def test_load_config_names_the_fix_for_a_missing_file_and_an_unknown_variant(tmp_path):
  with pytest.raises(FileNotFoundError, match="--config=configs/NAME.py"):
    config_base.load_config(tmp_path / "nope.py")
  with pytest.raises(ValueError, match=r"'resnet' is neither a model variant.*Valid variants: "
                                       r".*rese2_multi.*samplecnn") as error:
    config_base.load_config(f"{REPO / 'configs' / 'mtat.py'}:resnet")
  assert "\n" not in str(error.value)
  assert config_base.load_config(f"{REPO / 'configs' / 'mtat.py'}:samplecnn") == load_config(
      "mtat", "samplecnn")
