"""Tests for samplecnn_jax.torch_reference: the PyTorch twin is the same network as the JAX model.

Skipped when PyTorch (the optional `bench` extra) is not installed.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from samplecnn_jax import models, train
from samplecnn_jax.testing import load_config

torch = pytest.importorskip("torch", reason="PyTorch (the optional 'bench' extra) is not installed")
from samplecnn_jax import torch_reference as ref  # noqa: E402 -- needs torch.


def _jax_param_count(config) -> int:
  model = models.create_model(config.model, config.num_classes)
  return models.count_params(models.abstract_variables(model, config.input_size)["params"])


@pytest.mark.parametrize("dataset", ["test", "speech_commands", "mtat"])
@pytest.mark.parametrize("variant, se_ratio", [("samplecnn", 16.0), ("rese2_multi", 16.0),
                                               ("rese2_multi", 0.125)])
def test_parameter_count_equals_jax(dataset, variant, se_ratio):
  config = load_config(dataset, variant)
  config.model.se_ratio = se_ratio
  assert ref.count_params(ref.create_model(config)) == _jax_param_count(config)


def _tiny(variant, **model_overrides):
  config = load_config("test", variant)
  for key, value in model_overrides.items():
    config.model[key] = value
  model = models.create_model(config.model, config.num_classes)
  x = np.random.default_rng(0).standard_normal((4, config.input_size)).astype(np.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  twin = ref.create_model(config)
  ref.load_flax_variables(twin, variables)
  return config, model, variables, twin, x


@pytest.mark.parametrize(
    "variant, front_padding", [("samplecnn", "valid"), ("rese2_multi", "same"), ("se", "valid")]
)
def test_same_weights_give_same_logits(variant, front_padding):
  config, model, variables, twin, x = _tiny(
      variant, front_padding=front_padding, block_dropout=0.0, head_dropout=0.0
  )
  if front_padding == "same":  # 730 samples: the 'same' front conv pads one sample on the right.
    config.input_size = 730
    x = np.concatenate([x, x[:, :1]], axis=1)
  apply = jax.jit(lambda v, x: (
      model.apply(v, x, train=False),
      model.apply(v, x, train=True, mutable=["batch_stats"])[0],
  ))
  expected_eval, expected_train = apply(variables, x)
  np.testing.assert_allclose(twin.eval()(torch.from_numpy(x)).detach(), expected_eval, atol=1e-4)
  np.testing.assert_allclose(twin.train()(torch.from_numpy(x)).detach(), expected_train, atol=1e-4)


@pytest.mark.parametrize("label_type", ["multi_label", "multi_class"])
def test_one_train_step_updates_parameters_as_the_jax_step(label_type):
  """SGD-Nesterov, lr 0.01, BCE or CE: one step from the same weights lands on the same weights."""
  config, model, variables, twin, x = _tiny("rese2_multi", block_dropout=0.0, head_dropout=0.0)
  config.label_type = label_type
  labels = np.eye(config.num_classes, dtype=np.float32)[[0, 3, 5, 1]]
  if label_type == "multi_label":
    labels[0, 2] = 1.0
  state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(0)))
  state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  state, metrics = jax.jit(lambda s, b: train.train_step(s, b, config))(
      state, {"audio": x, "label": labels}
  )
  optimizer = ref.create_optimizer(config, twin)
  loss = ref.train_step(twin, optimizer, torch.from_numpy(x), torch.from_numpy(labels), label_type)
  np.testing.assert_allclose(float(loss), float(metrics.compute()["loss"]), rtol=1e-5)
  stepped = ref.create_model(config)
  ref.load_flax_variables(stepped, {"params": state.params, "batch_stats": state.batch_stats})
  for (name, got), expected in zip(twin.named_parameters(), stepped.parameters(), strict=True):
    np.testing.assert_allclose(got.detach(), expected.detach(), atol=2e-5, err_msg=name)
