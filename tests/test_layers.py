"""Tests for samplecnn_jax.layers: the fast layers give the plain Flax layers' values,
gradients, random masks and statistics, alone and inside a model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

from samplecnn_jax import layers, models
from samplecnn_jax.testing import load_config


@pytest.mark.parametrize("length", [9, 10, 11])
def test_max_pool_matches_flax_values_and_gradients_with_ties(length):
  x = jax.random.normal(jax.random.key(0), (2, length, 3))
  x = x.at[0, :6].set(1.0).at[1, 3:6, 0].set(0.0)  # Tied windows (silence gives these).
  plain = lambda v: nn.max_pool(v, (3,), (3,), padding="VALID")
  cotangent = jax.random.normal(jax.random.key(1), plain(x).shape)
  np.testing.assert_array_equal(layers.max_pool(x), plain(x))
  fast_grad = jax.vjp(layers.max_pool, x)[1](cotangent)[0]
  plain_grad = jax.vjp(plain, x)[1](cotangent)[0]
  np.testing.assert_array_equal(fast_grad, plain_grad)  # The first maximum gets the gradient.


@pytest.mark.parametrize(
    "key", [jax.random.key(3), jax.random.key_data(jax.random.key(4))], ids=["typed", "raw"]
)
def test_bernoulli_is_bit_exact_with_jax_random(key):
  for p, shape in [(0.8, (4, 7, 5)), (0.5, (3, 1000))]:
    np.testing.assert_array_equal(
        layers.bernoulli(key, p, shape), jax.random.bernoulli(key, p, shape)
    )


def _train_outputs_and_grads(model, variables, x):
  def loss(params):
    logits, _ = model.apply(
        {**variables, "params": params}, x, train=True,
        rngs={"dropout": jax.random.key_data(jax.random.key(7))}, mutable=["batch_stats"],
    )
    return jnp.sum(logits**2), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return logits, grads


def _assert_trees_close(a, b, rtol):
  """Relative to the largest value in `b`: gradients that should be 0 are rounding noise."""
  scale = max(float(np.abs(y).max()) for y in jax.tree.leaves(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)


def test_dropout_masks_match_flax_dropout():
  x = jax.random.normal(jax.random.key(0), (3, 50, 4))
  rngs = {"dropout": jax.random.key(5)}
  apply = lambda layer: jax.jit(lambda v: layer.apply({}, v, deterministic=False, rngs=rngs))(x)
  np.testing.assert_array_equal(apply(layers.Dropout(0.2)), apply(nn.Dropout(0.2)))


def test_batchnorm_matches_flax_values_statistics_and_gradients():
  x = jax.random.normal(jax.random.key(0), (4, 30, 6)) * 3.0 + 1.0
  cotangent = jax.random.normal(jax.random.key(1), x.shape)
  variables = nn.BatchNorm(use_running_average=False).init(jax.random.key(2), x)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # Not the trivial initial values.

  def run(layer):
    def loss(x, params):
      y, updates = layer.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return jnp.sum(y * cotangent), (y, updates)

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(x, variables["params"])

  kwargs = dict(use_running_average=False, momentum=0.9, epsilon=1e-3)
  fast_grads, (fast_y, fast_stats) = run(layers.BatchNorm(**kwargs))
  plain_grads, (plain_y, plain_stats) = run(nn.BatchNorm(**kwargs))
  np.testing.assert_array_equal(fast_y, plain_y)
  for a, b in zip(jax.tree.leaves(fast_stats), jax.tree.leaves(plain_stats), strict=True):
    np.testing.assert_array_equal(a, b)
  _assert_trees_close(fast_grads, plain_grads, rtol=1e-5)


def test_model_with_fast_layers_matches_plain_flax_layers(monkeypatch):
  """Same variable paths (hence dropout keys, checkpoints), outputs and gradients."""
  model, variables, x = tiny_model("rese2_multi")
  fast = _train_outputs_and_grads(model, variables, x)
  monkeypatch.setattr(layers, "Dropout", nn.Dropout)
  monkeypatch.setattr(layers, "BatchNorm", nn.BatchNorm)
  monkeypatch.setattr(layers, "max_pool", lambda v, size: nn.max_pool(v, (size,), (size,)))
  _assert_trees_close(fast, _train_outputs_and_grads(model, variables, x), rtol=1e-5)


def test_matmul_conv_impl_matches_xla_outputs_and_gradients():
  model, variables, x = tiny_model("rese2_multi", front_padding="same")
  matmul_model, matmul_variables, _ = tiny_model(
      "rese2_multi", front_padding="same", conv_impl="matmul"
  )
  # Same parameter tree, so checkpoints load either way; compare with the same weights.
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, matmul_variables)
  ref = _train_outputs_and_grads(model, variables, x)
  out = _train_outputs_and_grads(matmul_model, variables, x)
  _assert_trees_close(out, ref, rtol=1e-4)


@pytest.mark.parametrize("stride, padding, kernel", [(1, "SAME", 3), (3, "VALID", 3),
                                                     (3, "SAME", 3), (1, "SAME", 1)])
def test_matmul_conv_matches_lax_conv(stride, padding, kernel):
  x = jax.random.normal(jax.random.key(0), (2, 31, 5))
  w = jax.random.normal(jax.random.key(1), (kernel, 5, 7))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NWC", "WIO", "NWC"))
  expected = jax.lax.conv_general_dilated(x, w, (stride,), padding, dimension_numbers=numbers)
  got = layers.matmul_conv(x, w, (stride,), padding, dimension_numbers=numbers)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_conv_impl_lists_choices():
  config = load_config("test")
  config.model.conv_impl = "fft"
  with pytest.raises(ValueError, match="Unknown conv_impl 'fft'. Valid: xla, matmul"):
    models.create_model(config.model, config.num_classes)
