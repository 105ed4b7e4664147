"""Tests for samplecnn_jax.adapt: each rule on synthetic numbers, configs/*.py resolving to
themselves, the real excerpts' derived fields, and configs/small_data.py end to end."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, load_config

from samplecnn_jax import adapt, config_base, main, models, prepare, store, workdir_files

RATE = 16000
CONFIG_NAMES = sorted(path.stem for path in (REPO / "configs").glob("*.py"))


def synthetic_store(path, lengths: dict[str, list[int]], *, vocabulary=("a", "b", "c"),
                    label_type="multi_class", sample_rate=RATE) -> store.Store:
  """A store of clip lengths only (manifest + clip_lengths.npy, no audio): what resolve reads."""
  splits = {}
  for split, values in lengths.items():
    (path / split).mkdir(parents=True, exist_ok=True)
    np.save(path / split / store.CLIP_LENGTHS, np.asarray(values, np.int64))
    splits[split] = store.SplitInfo(len(values), int(sum(values)), (),
                                    f"{split}/{store.CLIP_LENGTHS}")
  manifest = store.Manifest(sample_rate, label_type, tuple(vocabulary), splits, dataset="csv")
  manifest.write(path)
  return store.Store.open(path)


# --- The rules on synthetic numbers ------------------------------------------------------------


@pytest.fixture
def two_second_cap(monkeypatch):
  """The segment rule with a 2-s cap (the shipped cap is 1 s), so that clamping and the
  median show apart."""
  monkeypatch.setattr(adapt, "MAX_SEGMENT_SECONDS", 2.0)


@pytest.mark.parametrize("seconds, expected", [
    ([1.0] * 5, 16000),  # 1-s speech: exactly one second.
    ([0.3, 0.5, 0.6], 16000),  # Short clips: raised to MIN_SEGMENT_SECONDS.
    ([1.2, 1.5, 9.0], 24000),  # The median, not the mean.
    ([4.1, 3.0, 10.0, 5.0, 2.0], 32000),  # Long clips: capped at MAX_SEGMENT_SECONDS.
])
def test_segment_samples_is_the_median_train_clip_clamped(seconds, expected, two_second_cap):
  derived = adapt.segment_samples([round(s * RATE) for s in seconds], RATE)
  assert derived.value == expected
  assert "median train clip" in derived.reason


def test_segment_samples_names_the_cap_in_its_reason(two_second_cap):
  assert "capped at 2.0 s" in adapt.segment_samples([4.1 * RATE] * 3, RATE).reason
  assert "raised to 1.0 s" in adapt.segment_samples([0.5 * RATE] * 3, RATE).reason


@pytest.mark.parametrize("input_size, blocks", [(16000, 7), (32000, 8), (24000, 8),
                                                (19683, 8), (19682, 7), (729, 5)])
def test_blocks_for_is_the_deepest_trunk_that_fits(input_size, blocks):
  assert adapt.blocks_for(input_size).value == blocks
  models.check_input_size(input_size, blocks)
  with pytest.raises(ValueError):
    models.check_input_size(input_size, blocks + 1)


@pytest.mark.parametrize("longest, input_size, expected", [
    (16000, 16000, 1), (12000, 16000, 1), (16001, 16000, 2), (160000, 32000, 5),
])
def test_eval_segments_cover_the_longest_clip(longest, input_size, expected):
  derived = adapt.eval_segments_for(longest, input_size, RATE)
  assert derived.value == expected and "capped" not in derived.reason


def test_eval_segments_are_capped_and_say_so():
  derived = adapt.eval_segments_for(600 * RATE, 32000, RATE)
  assert derived.value == adapt.MAX_EVAL_SEGMENTS
  assert derived.reason.startswith("capped") and "300" in derived.reason


def test_mixup_is_for_single_label_stores_only():
  assert adapt.mixup_alpha_for("multi_class").value == adapt.MIXUP_ALPHA > 0
  derived = adapt.mixup_alpha_for("multi_label")
  assert derived.value == 0.0 and "multi-label" in derived.reason


def test_metric_follows_the_label_type():
  assert adapt.metric_for("multi_class").value == "accuracy"
  assert adapt.metric_for("multi_label").value == "f_score"


def test_step_cost_scales_with_input_and_batch_and_grows_with_width():
  assert adapt.step_seconds(16, 16000, 32) == pytest.approx(adapt.SECONDS_PER_STEP[16])
  assert adapt.step_seconds(32, 32000, 64) == pytest.approx(4 * adapt.SECONDS_PER_STEP[32])
  costs = [adapt.step_seconds(w, 16000, 32) for w in (8, 16, 24, 32, 48, 64, 128)]
  assert costs == sorted(costs) and len(set(costs)) == len(costs)


def test_a_large_budget_picks_the_widest_width_and_target_epochs():
  width, steps = adapt.width_and_steps(333, 1000.0, 16000, 32)
  assert width.value == max(adapt.WIDTHS)
  assert steps.value == adapt.epoch_steps(333, 32) == 3122


def test_a_medium_budget_picks_the_widest_width_whose_min_epochs_fit():
  # 5 min, 180 clips: MIN_EPOCHS (563 steps) fit at width 32 (~675), so 32 trains 675 steps.
  width, steps = adapt.width_and_steps(180, 5.0, 16000, 32)
  assert (width.value, steps.value) == (32, adapt.budget_steps(5.0, 32, 16000, 32))
  assert adapt.budget_steps(5.0, 32, 16000, 32) >= adapt.epoch_steps(180, 32, adapt.MIN_EPOCHS)
  # 5 min, 333 clips: 1041 steps do not fit at 32, so width 16 for what the budget allows.
  width, steps = adapt.width_and_steps(333, 5.0, 16000, 32)
  assert (width.value, steps.value) == (16, adapt.budget_steps(5.0, 16, 16000, 32))
  assert adapt.budget_steps(5.0, 32, 16000, 32) < adapt.epoch_steps(333, 32, adapt.MIN_EPOCHS)


def test_a_small_budget_takes_the_narrowest_width_and_the_steps_it_allows():
  width, steps = adapt.width_and_steps(2000, 5.0, 32000, 32)
  assert width.value == min(adapt.WIDTHS)
  assert steps.value == adapt.budget_steps(5.0, 16, 32000, 32) < adapt.epoch_steps(2000, 32)
  assert "min allow" in steps.reason and "no width" in width.reason


def test_derived_steps_are_at_least_min_steps():
  _, few_clips = adapt.width_and_steps(10, 15.0, 16000, 32)
  _, tiny_budget = adapt.width_and_steps(333, 0.01, 16000, 32)
  assert few_clips.value == tiny_budget.value == adapt.MIN_STEPS


def test_a_width_or_steps_the_user_set_wins():
  width, steps = adapt.width_and_steps(333, 15.0, 16000, 32, width=64)
  assert width.value == 64 and steps.value == adapt.budget_steps(15.0, 64, 16000, 32)
  width, steps = adapt.width_and_steps(333, 15.0, 16000, 32, steps=2000)
  assert steps.value == 2000 and width.value == 32  # 2000 steps fit at 32, not at 64.


def test_a_budget_that_is_not_positive_names_the_field():
  with pytest.raises(ValueError, match="--config.budget_minutes"):
    adapt.width_and_steps(333, 0.0, 16000, 32)


# --- Resolving configs ---------------------------------------------------------------------------


@pytest.fixture
def long_clip_store(tmp_path):
  """120 train clips of 3-5 s; valid and test up to 9 s; 4 classes, multi_label, 8 kHz."""
  rate = 8000
  train = [round((3 + 2 * i / 119) * rate) for i in range(120)]
  return synthetic_store(tmp_path, {"train": train, "valid": [rate, 9 * rate],
                                    "test": [2 * rate, 5 * rate]},
                         vocabulary=("a", "b", "c", "d"), label_type="multi_label",
                         sample_rate=rate)


def test_small_data_config_resolves_every_auto_field(long_clip_store, caplog, two_second_cap):
  config = load_config("small_data")
  before = config.to_json()
  with caplog.at_level(logging.INFO):
    resolved = adapt.resolve(config, long_clip_store)
  assert config.to_json() == before, "the input config is not changed"
  assert adapt.auto_fields(resolved) == []
  assert (resolved.num_classes, resolved.label_type, resolved.metric, resolved.sample_rate) == (
      4, "multi_label", "f_score", 8000)
  assert resolved.input_size == resolved.model.input_size == 16000  # Median 4 s, capped at 2 s.
  assert resolved.model.num_blocks == 7 and resolved.eval_segments == 5  # 9 s in 2-s segments.
  width, steps = adapt.width_and_steps(120, 15.0, 16000, resolved.batch_size)
  assert (resolved.model.base_width, resolved.num_train_steps) == (width.value, steps.value)
  assert resolved.steps_per_eval == resolved.checkpoint_every_steps == steps.value // 10
  assert resolved.augment.mixup_alpha == 0.0  # A multi-label store.
  config_base.validate_config(resolved)
  lines = [r.getMessage() for r in caplog.records if r.name == "root"]
  assert "input_size=16000 (median train clip 4.0 s, capped at 2.0 s)" in lines
  for field in config_base.AUTO:
    assert sum(line.startswith(f"{field}=") for line in lines) == 1, field


def test_values_the_user_set_win(long_clip_store):
  config = load_config("small_data")
  config.input_size = 24000
  config.eval_segments = 2
  config.model.base_width = 8
  config.num_train_steps = 50
  config.label_type = "multi_label"
  config.metric = "roc_auc"
  resolved = adapt.resolve(config, long_clip_store)
  assert (resolved.input_size, resolved.model.input_size, resolved.eval_segments) == (
      24000, 24000, 2)
  assert resolved.model.num_blocks == 8  # Derived from the input size the user set.
  assert (resolved.model.base_width, resolved.num_train_steps, resolved.steps_per_eval) == (
      8, 50, 5)
  assert resolved.metric == "roc_auc"


def test_resolve_is_deterministic(long_clip_store):
  config = load_config("small_data")
  assert adapt.resolve(config, long_clip_store).to_json() == adapt.resolve(
      load_config("small_data"), long_clip_store).to_json()


def test_a_capped_eval_segment_count_is_a_warning(tmp_path, caplog):
  data = synthetic_store(tmp_path, {"train": [RATE] * 4, "valid": [RATE], "test": [60 * RATE]})
  with caplog.at_level(logging.INFO):
    resolved = adapt.resolve(load_config("small_data"), data)
  assert resolved.eval_segments == adapt.MAX_EVAL_SEGMENTS
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "sampled, not covered" in warnings[0].getMessage()


def test_an_auto_input_size_without_train_clips_names_the_fix(tmp_path):
  data = synthetic_store(tmp_path, {"valid": [RATE], "test": [RATE]})
  with pytest.raises(ValueError, match=r"train split 'train'.*--config.input_size") as error:
    adapt.resolve(load_config("small_data"), data)
  assert "\n" not in str(error.value)


def flat(config) -> dict:
  """{"model.num_blocks": 7, ...}: every field of a config by its dotted name."""
  def items(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        yield from items(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value
  return dict(items(json.loads(config.to_json()), ""))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_resolves_to_itself_but_its_auto_fields(name, tmp_path):
  """configs/small_data.py changes only its auto fields; every other file is left as it is."""
  data = synthetic_store(tmp_path, {"train": [RATE] * 40, "valid": [RATE], "test": [RATE]})
  for arg in (None, "small_data"):
    config = load_config(name, arg)
    auto = adapt.auto_fields(config)
    resolved = adapt.resolve(config, data)
    assert adapt.auto_fields(resolved) == []
    before, after = flat(config), flat(resolved)
    changed = {field for field in before if before[field] != after[field]}
    assert changed <= set(auto) | {"model.input_size"}  # Follows input_size.


def test_the_small_data_config_is_all_auto_and_unresolved_fails_validation():
  config = load_config("small_data")
  assert adapt.auto_fields(config) == list(config_base.AUTO)
  with pytest.raises(ValueError, match=r"config.num_classes=0 .*adapt.*--config.num_classes"):
    config_base.validate_config(config)


def test_small_data_config_keeps_the_recipe_and_the_variant_argument():
  recipe = config_base.apply_small_data(load_config("speech_commands"))
  config = load_config("small_data")
  assert (config.optimizer, config.schedule, config.train_segments) == (
      recipe.optimizer, recipe.schedule, recipe.train_segments)
  assert config.augment.mixup_alpha == -1.0  # Auto: the recipe's value for single-label.
  assert adapt.MIXUP_ALPHA == recipe.augment.mixup_alpha > 0
  assert config.augment.noise_prob == 0 and config.dataset == "csv" and config.data_dir == ""
  assert load_config("small_data", "samplecnn").model.block == "basic"


def test_the_paper_argument_keeps_the_derived_fields_and_the_papers_recipe():
  paper, base = load_config("small_data", "paper"), config_base.base_config()
  assert adapt.auto_fields(paper) == [f for f in config_base.AUTO if f != "augment.mixup_alpha"]
  for field in ("optimizer", "schedule", "learning_rate", "batch_size", "train_segments",
                "segment_pooling", "label_smoothing", "bn_recalibration_batches"):
    assert paper[field] == base[field], field
  assert paper.augment.to_dict() == {**base.augment.to_dict(), "noise_prob": 0.0}
  assert load_config("small_data", "samplecnn,paper").model.block == "basic"


def test_a_missing_data_dir_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # No prepared/csv here.
  code = main.main(["main", f"--config={REPO / 'configs' / 'small_data.py'}",
                    f"--workdir={tmp_path / 'w'}"])
  lines = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and "--config.data_dir" in lines[0], lines
  assert not (tmp_path / "w").exists()


# --- The real excerpts -----------------------------------------------------------------------


def prepared_excerpt(tmp_path_factory, folder: str) -> store.Store:
  labels = SHARED_DATA / folder / "labels.csv"
  if not labels.is_file():
    pytest.skip(f"real dataset excerpt not found at {labels}")
  out = tmp_path_factory.mktemp(folder)
  prepare.prepare("csv", labels, out, workers=1, progress=False)
  return store.Store.open(out)


@pytest.fixture(scope="module")
def speech_store(tmp_path_factory) -> store.Store:
  return prepared_excerpt(tmp_path_factory, "speech_commands_v0.02_excerpt")


@pytest.fixture(scope="module")
def instruments_store(tmp_path_factory) -> store.Store:
  return prepared_excerpt(tmp_path_factory, "instruments10_excerpt")


def test_speech_excerpt_resolves_to_one_second_and_one_segment(speech_store):
  resolved = adapt.resolve(load_config("small_data"), speech_store)
  assert (resolved.num_classes, resolved.label_type, resolved.metric) == (
      12, "multi_class", "accuracy")
  assert (resolved.input_size, resolved.model.num_blocks, resolved.eval_segments) == (16000, 7, 1)
  speech_store.check_matches(resolved)


def test_instruments_excerpt_eval_segments_cover_its_longest_clip(instruments_store):
  resolved = adapt.resolve(load_config("small_data"), instruments_store)
  assert (resolved.num_classes, resolved.label_type, resolved.metric) == (
      10, "multi_class", "accuracy")
  assert resolved.input_size == round(adapt.MAX_SEGMENT_SECONDS * RATE)  # Median clip > 1 s.
  longest = max(int(instruments_store.clip_lengths(split).max()) for split in ("valid", "test"))
  assert resolved.eval_segments * resolved.input_size >= longest > (
      resolved.eval_segments - 1) * resolved.input_size
  instruments_store.check_matches(resolved)


# --- End to end ------------------------------------------------------------------------------


def write_csv_store(root, rate: int = 8000) -> str:
  """A tiny csv store: 2 classes, 12 / 4 / 4 clips of 0.4-1.4 s at `rate` Hz."""
  import soundfile as sf

  rng = np.random.default_rng(0)
  rows = ["path,label,split"]
  for i in range(20):
    split = "train" if i < 12 else "valid" if i < 16 else "test"
    seconds = 0.4 + (i % 6) * 0.2
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (300 if i % 2 else 900) * t) + rng.normal(0, 0.01, len(t))
    sf.write(root / f"c{i}.wav", wave.astype(np.float32), rate)
    rows.append(f"c{i}.wav,{'ab'[i % 2]},{split}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  prepare.prepare("csv", root / "labels.csv", root / "store", sample_rate=rate, workers=1,
                  progress=False)
  return str(root / "store")


@pytest.mark.slow
def test_small_data_config_trains_records_concrete_values_and_evaluates(tmp_path):
  data_dir = write_csv_store(tmp_path)
  workdir = tmp_path / "work"
  args = [f"--config={REPO / 'configs' / 'small_data.py'}", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", "--config.budget_minutes=0.0001",
          "--config.num_train_steps=4", "--config.batch_size=4", "--config.eval_batch_size=4",
          "--config.bn_recalibration_batches=1", "--config.warmup_steps=1"]
  assert main.main(["main", *args]) == 0
  recorded = json.loads((workdir / workdir_files.CONFIG_FILE).read_text())
  assert (recorded["num_classes"], recorded["label_type"], recorded["metric"]) == (
      2, "multi_class", "accuracy")
  assert recorded["sample_rate"] == 8000 and recorded["input_size"] == 8000  # Raised to 1 s.
  assert recorded["model"]["input_size"] == 8000 and recorded["model"]["num_blocks"] == 7
  assert recorded["eval_segments"] == 2  # The longest valid/test clip is 1.4 s.
  assert recorded["model"]["base_width"] == min(adapt.WIDTHS)  # No width fits 0.0001 min.
  assert recorded["num_train_steps"] == 4 and recorded["steps_per_eval"] == 1
  assert adapt.auto_fields(workdir_files.read_config(workdir)) == []
  (workdir / "metrics_test.json").unlink()
  assert main.main(["main", f"--workdir={workdir}", "--mode=eval", "--split=test"]) == 0
  assert workdir_files.read_metrics(workdir, "test")["num_clips"] == 4
  # The config file again: it resolves to the recorded values, so the checkpoints load.
  assert main.main(["main", *args, "--mode=eval", "--split=valid"]) == 0
  assert workdir_files.read_metrics(workdir, "valid")["checkpoint"] == "best"
