"""Tests for samplecnn_jax.transfer: init_from (same and other class count), the trunk
mismatch error, a frozen trunk, the trunk learning-rate factor, and resume > init_from.

Tests that start from a trained run (the `source_run` fixture) are marked `slow`."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import load_config, tiny_config, tiny_model
from flax import traverse_util

from samplecnn_jax import checkpointing, input_pipeline, models, prepare, train, transfer


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> str:
  out = tmp_path_factory.mktemp("demo")
  prepare.prepare("demo", None, out, workers=1, num_train=32, num_valid=8, num_test=8)
  return str(out)


@pytest.fixture(scope="module")
def source_run(demo_store, tmp_path_factory) -> str:
  """A trained tiny run to start from."""
  workdir = str(tmp_path_factory.mktemp("source"))
  train.train_and_evaluate(tiny_config(demo_store), workdir)
  return workdir


@pytest.fixture(scope="module")
def frozen_run(demo_store, source_run, tmp_path_factory):
  """A run started from `source_run` that trains only the head (BN recalibration on)."""
  workdir = str(tmp_path_factory.mktemp("frozen"))
  config = tiny_config(demo_store, init_from=source_run, trainable="head",
                       init_from_checkpoint="latest", bn_recalibration_batches=2)
  train.train_and_evaluate(config, workdir)
  return config, workdir


def split(tree):
  flat = traverse_util.flatten_dict(tree)
  trunk = {p: np.asarray(v) for p, v in flat.items() if transfer.is_trunk(p)}
  head = {p: np.asarray(v) for p, v in flat.items() if not transfer.is_trunk(p)}
  return trunk, head


def starting_state(config, workdir):
  run = train.setup(config, workdir)
  train_iter = input_pipeline.create_train_iterator(config, run.store, seed=config.seed)
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    state, _ = train.restore_state(run, ckpt, train_iter)
  finally:
    ckpt.close()
  return run, state


def waveforms(config):
  return jax.random.normal(jax.random.key(3), (4, config.input_size))


@pytest.mark.slow
def test_same_class_count_reproduces_the_source_logits_at_step_0(demo_store, source_run,
                                                                  tmp_path):
  config = tiny_config(demo_store, init_from=source_run, seed=7)
  run, state = starting_state(config, str(tmp_path))
  assert int(state.step) == 0
  source = checkpointing.load_variables(source_run, config, "best")
  x = waveforms(config)
  expected = run.model.apply(source, x, train=False)
  got = run.model.apply(train.model_variables(state), x, train=False)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  # A different seed from scratch gives other logits: the test above can fail.
  scratch = train.create_train_state(tiny_config(demo_store, seed=7), run.model,
                                     jax.random.key_data(jax.random.key(7)))
  assert not np.allclose(run.model.apply(train.model_variables(scratch), x, train=False),
                         expected)


@pytest.mark.slow
def test_other_class_count_keeps_the_trunk_features_and_reinitialises_the_head(
    demo_store, source_run):
  config = tiny_config(demo_store, init_from=source_run, num_classes=3)
  model = models.create_model(config.model, 3)
  x = waveforms(config)
  fresh = model.init(jax.random.key(0), x, train=False)
  loaded = transfer.load_into(config, fresh)
  source = checkpointing.load_variables(source_run, config, "best", check_config=False)
  source_model = models.create_model(config.model, 6)
  layers = config.model.num_blocks + 1
  expected = source_model.apply(source, x, train=False, num_layers=layers)[-1]
  got = model.apply(loaded, x, train=False, num_layers=layers)[-1]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  assert loaded["params"]["logits"]["kernel"].shape[-1] == 3
  np.testing.assert_array_equal(loaded["params"]["logits"]["kernel"],
                                fresh["params"]["logits"]["kernel"])
  # The hidden head layer has the same shape in both runs, so it is loaded.
  np.testing.assert_array_equal(loaded["params"]["head_dense"]["kernel"],
                                source["params"]["head_dense"]["kernel"])


@pytest.mark.slow
def test_a_trunk_of_another_width_stops_with_the_mismatched_paths(demo_store, source_run):
  config = tiny_config(demo_store, init_from=source_run)
  config.model.base_width = 8
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), waveforms(config), train=False)
  with pytest.raises(transfer.TrunkMismatchError) as error:
    transfer.load_into(config, variables)
  message = str(error.value)
  assert "params/front_conv/kernel: this run (3, 1, 8), init_from (3, 1, 4)" in message
  assert "batch_stats/front_bn/mean" in message and "block1" in message
  assert "logits" not in message


@pytest.mark.slow
def test_a_frozen_trunk_is_bit_identical_after_training_while_the_head_changed(
    source_run, frozen_run):
  config, workdir = frozen_run
  before = checkpointing.load_variables(source_run, config, "latest")
  after = checkpointing.load_variables(workdir, config, "latest")
  assert checkpointing.checkpoint_step(workdir, "latest") == config.num_train_steps
  for collection in ("params", "batch_stats"):
    trunk_before, head_before = split(before[collection])
    trunk_after, head_after = split(after[collection])
    assert trunk_before and trunk_before.keys() == trunk_after.keys()
    for path in trunk_before:
      assert trunk_before[path].tobytes() == trunk_after[path].tobytes(), (collection, path)
    assert any(not np.array_equal(head_before[p], head_after[p]) for p in head_before), collection


@pytest.mark.slow
def test_resume_beats_init_from(frozen_run):
  config, workdir = frozen_run
  _, state = starting_state(config, workdir)
  assert int(state.step) == config.num_train_steps
  trained = checkpointing.load_variables(workdir, config, "latest")
  for x, y in zip(jax.tree.leaves(train.model_variables(state)), jax.tree.leaves(trained),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_trunk_lr_factor_scales_only_the_trunk_updates():
  _, variables, _ = tiny_model()
  params = variables["params"]
  grads = jax.tree.map(np.ones_like, params)
  updates = {}
  for factor in (1.0, 0.25):
    config = load_config("test")
    config.trunk_lr_factor = factor
    tx = train.create_optimizer(config)
    updates[factor], _ = tx.update(grads, tx.init(params), params)
  trunk_1, head_1 = split(updates[1.0])
  trunk_q, head_q = split(updates[0.25])
  for path in trunk_1:
    np.testing.assert_allclose(trunk_q[path], 0.25 * trunk_1[path], rtol=1e-6)
  for path in head_1:
    np.testing.assert_array_equal(head_q[path], head_1[path])


def test_bad_transfer_fields_are_rejected(demo_store, tmp_path):
  with pytest.raises(ValueError, match="trainable"):
    transfer.validate_config(tiny_config(demo_store, trainable="trunk"))
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    transfer.validate_config(tiny_config(demo_store, init_from=str(tmp_path)))
