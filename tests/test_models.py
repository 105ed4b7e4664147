"""Tests for samplecnn_jax.models: reference parameter counts, shapes, modes, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

from samplecnn_jax import models
from samplecnn_jax.testing import load_config

DATASET_CONFIGS = ("mtat", "speech_commands", "dcase", "demo", "test")
# Each variant once; `rese2multi` is an alias of `rese2_multi`.
VARIANT_NAMES = sorted(set(models.VARIANTS) - {"rese2multi"})


def _param_count(config, num_classes):
  model = models.create_model(config.model, num_classes)
  return models.count_params(models.abstract_variables(model, config.input_size)["params"])


@pytest.mark.parametrize(
    "variant, se_ratio, expected",
    [
        ("samplecnn", 16.0, 1_869_874),
        ("se_multi", 16.0, 24_742_706),
        ("se_multi", 0.125, 2_858_066),
        ("res2_multi", 16.0, 4_920_882),
        ("rese2_multi", 16.0, 26_980_146),
        ("rese2_multi", 0.125, 5_095_506),
    ],
)
def test_parameter_counts_match_reference_3_9_model(variant, se_ratio, expected):
  """MODELS.md 1.5: the 59049-sample / 9-block / 50-tag models."""
  config = load_config("mtat", variant)
  config.input_size = 59049
  config.model.num_blocks = 9
  config.model.se_ratio = se_ratio
  assert _param_count(config, 50) == expected


@pytest.mark.parametrize(
    "se_ratio, num_classes, expected",
    [(0.125, 35, 4_668_707), (0.125, 17, 4_650_257), (16.0, 12, 24_444_940)],
)
def test_parameter_counts_match_reference_8_block_models(se_ratio, num_classes, expected):
  config = load_config("speech_commands", "rese2_multi")
  config.input_size = 22050
  config.model.num_blocks = 8
  config.model.se_ratio = se_ratio
  assert _param_count(config, num_classes) == expected


def test_block_widths_follow_reference_rule():
  assert models.block_widths(9, 128) == [128, 128, 256, 256, 256, 256, 256, 256, 512]
  assert models.block_widths(8, 128) == [128, 128, 256, 256, 256, 256, 256, 512]


@pytest.mark.parametrize("dataset", DATASET_CONFIGS)
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_output_shape_every_config_and_variant(dataset, variant):
  """Full sizes through jax.eval_shape: no compile, no allocation."""
  config = load_config(dataset, variant)
  model = models.create_model(config.model, config.num_classes)
  shape = jax.ShapeDtypeStruct((3, config.input_size), jnp.float32)

  def forward(x):
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=False)

  out = jax.eval_shape(forward, shape)
  assert out.shape == (3, config.num_classes)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    "input_size, num_blocks, final_length",
    [(39366, 8, 2), (16000, 7, 2), (19683, 7, 3), (59049, 9, 1)],
)
def test_paper_input_sizes_reach_expected_lengths(input_size, num_blocks, final_length):
  assert models.feature_lengths(input_size, num_blocks)[-1] == final_length
  assert models.feature_lengths(input_size, num_blocks, "same")[-1] == final_length


def test_train_mode_uses_dropout_and_batch_statistics():
  model, variables, x = tiny_model()
  apply = lambda key: model.apply(
      variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
  )
  out_a, updates = apply(jax.random.key(1))
  out_b, _ = apply(jax.random.key(2))
  assert not np.allclose(out_a, out_b), "dropout must make train-mode outputs depend on the rng"
  # Batch statistics are updated in train mode...
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
  # ...and train-mode outputs depend on the other examples of the batch (batch statistics).
  model_nodrop, variables_nodrop, _ = tiny_model(block_dropout=0.0, head_dropout=0.0)
  first = lambda batch: model_nodrop.apply(
      variables_nodrop, batch, train=True, mutable=["batch_stats"]
  )[0][0]
  assert not np.allclose(first(x), first(x.at[1:].multiply(3.0)), atol=1e-5)


def test_eval_mode_is_deterministic_and_per_example():
  model, variables, x = tiny_model()
  out = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(out, model.apply(variables, x, train=False))
  # Running averages, not batch statistics: an example's output ignores the rest of the batch.
  alone = model.apply(variables, x[:1], train=False)
  np.testing.assert_allclose(out[:1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["samplecnn", "rese2_multi"])
def test_bfloat16_compute_keeps_float32_params(variant):
  model, variables, x = tiny_model(variant, dtype="bfloat16")
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
  out = model.apply(variables, x, train=False)
  assert out.dtype == jnp.float32 and np.isfinite(out).all()
  reference, ref_vars, _ = tiny_model(variant)
  np.testing.assert_allclose(out, reference.apply(ref_vars, x, train=False), atol=0.1, rtol=0.1)


def test_features_path_returns_layer_outputs():
  model, variables, _ = tiny_model("samplecnn")
  outputs = model.apply(variables, jnp.zeros((2, 729)), num_layers=6)
  assert [o.shape[1] for o in outputs] == [243, 81, 27, 9, 3, 1]
  assert len(models.layer_names(model)) == model.num_blocks + 1


def test_initialisers_follow_keras_reference():
  model, variables, _ = tiny_model("rese2_multi")
  front = variables["params"]["front_conv"]["kernel"]  # (3, 1, width): he_uniform limit sqrt(6/3)
  assert np.abs(front).max() <= np.sqrt(6 / 3) + 1e-6
  assert np.allclose(variables["params"]["front_conv"]["bias"], 0)
  bn = model.bn_momentum, model.bn_epsilon
  assert bn == (0.99, 1e-3)


def test_too_short_input_names_largest_block_count_that_fits():
  config = load_config("speech_commands")
  config.model.num_blocks = 8
  with pytest.raises(ValueError, match="largest block count that fits 16000 samples is num_blocks=7"):
    models.create_model(config.model, 31)
  model, variables, _ = tiny_model()
  with pytest.raises(ValueError, match="too short"):
    model.apply(variables, jnp.zeros((1, 100)), train=False)


def test_unknown_names_list_valid_choices():
  with pytest.raises(ValueError, match="Valid variants: .*rese2_multi.*samplecnn"):
    load_config("mtat", "resnet50")
  config = load_config("mtat")
  config.model.block = "conv"
  with pytest.raises(ValueError, match="Valid blocks: basic, se, res1, res2, rese1, rese2"):
    models.create_model(config.model, 50)
  config = load_config("mtat", "samplecnn")
  config.model.multi = True
  with pytest.raises(ValueError, match="multi=True needs head='gmp'"):
    models.create_model(config.model, 50)
  config = load_config("mtat", "samplecnn")
  config.model.global_pool = "mean_max"
  with pytest.raises(ValueError, match="global_pool='mean_max' needs head='gmp'"):
    models.create_model(config.model, 50)
  config.model.head, config.model.global_pool = "gmp", "avg"
  with pytest.raises(ValueError, match="Valid global pools: max, mean_max"):
    models.create_model(config.model, 50)


def test_mean_max_pool_doubles_the_embedding_and_adds_the_means():
  config = load_config("test", "rese2_multi")
  model = models.create_model(config.model, config.num_classes)
  config.model.global_pool = "mean_max"
  both = models.create_model(config.model, config.num_classes)
  x = jax.random.normal(jax.random.key(0), (2, config.input_size)) * 0.1
  variables = model.init(jax.random.key(1), x)
  assert both.init(jax.random.key(1), x)["params"]["head_dense"]["kernel"].shape[0] == (
      2 * variables["params"]["head_dense"]["kernel"].shape[0])
  levels = model.apply(variables, x, num_layers=config.model.num_blocks + 1)[-3:]
  variables = both.init(jax.random.key(1), x)
  _, state = both.apply(variables, x, mutable=["intermediates"])
  embedding = state["intermediates"][models.EMBEDDING][0]
  widths = sum(level.shape[-1] for level in levels)
  np.testing.assert_allclose(embedding[:, widths:],
                             np.concatenate([np.mean(level, axis=1) for level in levels], axis=-1),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["samplecnn", "se", "res1", "rese2_multi"])
def test_layers_sow_their_pre_activation(variant):
  """ReLU of what each layer sows is the layer output (for `se`, before the channel gate)."""
  model, variables, x = tiny_model(variant)
  outputs, state = model.apply(
      variables, x, train=False, num_layers=model.num_blocks + 1, mutable=["intermediates"]
  )
  for layer, output in enumerate(outputs, start=1):
    pre = models.pre_relu(state["intermediates"], layer)
    assert pre.shape == output.shape
    if variant == "se" and layer > 1:  # The SE gate scales the ReLU output by (0, 1) per channel.
      np.testing.assert_array_equal(np.asarray(output) > 0, np.asarray(pre) > 0)
      assert np.all(np.asarray(output) <= np.maximum(np.asarray(pre), 0) + 1e-6)
    else:
      np.testing.assert_allclose(jax.nn.relu(pre), output, rtol=1e-6, atol=1e-6)


def test_probabilities_are_sigmoid_or_softmax():
  logits = jnp.array([[0.0, 2.0, -1.0]])
  sigmoid = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0])))
  np.testing.assert_allclose(models.probabilities(logits, "multi_label")[0], sigmoid, rtol=1e-6)
  softmax = np.exp([0.0, 2.0, -1.0]) / np.exp([0.0, 2.0, -1.0]).sum()
  np.testing.assert_allclose(models.probabilities(logits, "multi_class")[0], softmax, rtol=1e-6)
