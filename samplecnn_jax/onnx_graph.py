"""The ONNX graph of a trained sample-level CNN, written node by node with `onnx.helper`.

`build_model(model_config, num_classes, label_type, input_size, variables, scaling)` returns
an `onnx.ModelProto` that maps `waveform` float32 `[batch, input_size]` (dynamic batch, raw
samples at the run's rate) to `scores` `[batch, num_classes]` (sigmoid or softmax, as the
run) and `embedding` `[batch, D]` (what the head reads, `models.EMBEDDING`). Inside:
- the run's input scaling (`segments.InputScaling`): per-segment RMS normalisation
  (ReduceMean, Sqrt, Max with `segments.RMS_FLOOR`, Div, Mul), then standardisation (Sub, Mul);
- the trunk in NCW layout: the strided front Conv, then per block Conv / MaxPool / Relu,
  Squeeze-Excitation as ReduceMean, Gemm, Relu, Gemm, Sigmoid, Mul, residual shortcuts as Add;
  every BatchNorm folded into the Conv or Gemm before it (inference statistics);
- the head: global max pools (ReduceMax, Concat for -Multi), Gemm, Relu, Gemm (the SampleCNN
  head: a 1x1 Conv, Relu, ReduceMax, Gemm).

Dropout is the identity at inference and is left out. The graph mirrors `models.py` layer for
layer (the parameter names are Flax's: `block3/Conv_1`, `SqueezeExcitation_0/Dense_0`);
`export.py` checks every variant against the JAX model. This module takes the channel rule
from `models.py` but never runs a model, and it does not know checkpoints or files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samplecnn_jax import models, segments

OPSET = 17  # ReduceMean / ReduceMax take `axes` as an attribute up to opset 17.
INPUT = "waveform"
SCORES = "scores"
EMBEDDING = "embedding"
BATCH = "batch"  # The symbolic batch dimension.
FRONT_END = "front_end"  # The front conv's output: the nodes up to it are the front end.


def block_output(index: int) -> str:
  """The name of block `index`'s output tensor (1-based); `se` blocks leave theirs unnamed.

  `incremental` cuts the graph there: the blocks before it are reused between a stream's
  overlapping windows.
  """
  return f"block{index}_out"


def same_pads(length: int, kernel: int, stride: int) -> tuple[int, int]:
  """The (low, high) padding of XLA's "SAME" for one spatial axis."""
  out = -(-length // stride)
  total = max((out - 1) * stride + kernel - length, 0)
  return total // 2, total - total // 2


class _Graph:
  """Nodes and initializers, with fresh names."""

  def __init__(self):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self._count = 0

  def name(self, hint: str) -> str:
    self._count += 1
    return f"{hint}_{self._count}"

  def const(self, hint: str, value: Any, dtype=np.float32) -> str:
    name = self.name(hint)
    self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def op(self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None,
         **attributes: Any) -> str:
    output = output or self.name(hint or op_type.lower())
    self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
    return output


def _fold(bn: Mapping[str, Any], stats: Mapping[str, Any], epsilon: float):
  """(scale, shift) of an inference BatchNorm: y = x * scale + shift."""
  scale = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(stats["var"], np.float64)
                                                       + epsilon)
  shift = np.asarray(bn["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * scale
  return scale, shift


class _Builder:
  """Adds the model's layers to a `_Graph`, reading Flax's parameter tree."""

  def __init__(self, graph: _Graph, params: Mapping, stats: Mapping, epsilon: float):
    self.g, self.params, self.stats, self.epsilon = graph, params, stats, epsilon

  def conv_bn(self, x: str, conv: Mapping, bn: Mapping, stats: Mapping, pads: tuple[int, int],
              stride: int = 1, hint: str = "conv") -> str:
    """Conv (Flax kernel (k, in, out)) with the BatchNorm after it folded in."""
    scale, shift = _fold(bn, stats, self.epsilon)
    kernel = np.transpose(np.asarray(conv["kernel"], np.float64), (2, 1, 0)) * scale[:, None, None]
    bias = np.asarray(conv["bias"], np.float64) * scale + shift
    k = kernel.shape[-1]
    return self.g.op("Conv", [x, self.g.const(f"{hint}_w", kernel), self.g.const(f"{hint}_b", bias)],
                     hint, kernel_shape=[k], strides=[stride], pads=list(pads))

  def dense(self, x: str, dense: Mapping, hint: str, bn: Mapping | None = None,
            stats: Mapping | None = None) -> str:
    """Gemm (Flax kernel (in, out)), with a BatchNorm after it folded in when given."""
    kernel = np.asarray(dense["kernel"], np.float64)
    bias = np.asarray(dense["bias"], np.float64)
    if bn is not None:
      scale, shift = _fold(bn, stats, self.epsilon)
      kernel, bias = kernel * scale[None, :], bias * scale + shift
    return self.g.op("Gemm", [x, self.g.const(f"{hint}_w", kernel), self.g.const(f"{hint}_b", bias)],
                     hint)

  def squeeze_excitation(self, x: str, params: Mapping) -> str:
    """As `models.SqueezeExcitation`: Dense_1 (C -> hidden) is applied first, Dense_0 second."""
    g = self.g
    squeezed = g.op("ReduceMean", [x], "se_mean", axes=[2], keepdims=0)
    hidden = g.op("Relu", [self.dense(squeezed, params["Dense_1"], "se_squeeze")])
    gate = g.op("Sigmoid", [self.dense(hidden, params["Dense_0"], "se_excite")])
    gate = g.op("Unsqueeze", [gate, g.const("axis2", [2], np.int64)], "se_gate")
    return g.op("Mul", [x, gate], "se_scaled")

  def block(self, x: str, index: int, kind: str, in_width: int, width: int) -> str:
    """Pooled block `index` (1-based) of `models.SampleBlock` (NCW)."""
    name = f"block{index}"
    g, params, stats = self.g, self.params[name], self.stats[name]
    pairs = iter(range(8))

    def conv_bn(y: str, k: int = 3) -> str:
      i = next(pairs)
      return self.conv_bn(y, params[f"Conv_{i}"], params[f"BatchNorm_{i}"],
                          stats[f"BatchNorm_{i}"], (k // 2, k // 2),
                          hint=f"{name}_conv")

    if kind in ("basic", "se"):
      pooled = g.op("MaxPool", [conv_bn(x)], f"{name}_pool", kernel_shape=[3], strides=[3])
      y = g.op("Relu", [pooled], output=block_output(index) if kind == "basic" else None)
      return self.squeeze_excitation(y, params["SqueezeExcitation_0"]) if kind == "se" else y
    shortcut = conv_bn(x, k=1) if in_width != width else x
    y = x
    num_convs = int(kind[-1])
    for i in range(num_convs):
      y = conv_bn(y)
      if i < num_convs - 1:
        y = g.op("Relu", [y])
    if kind.startswith("rese"):
      y = self.squeeze_excitation(y, params["SqueezeExcitation_0"])
    y = g.op("MaxPool", [g.op("Add", [y, shortcut], f"{name}_residual")], f"{name}_pool",
             kernel_shape=[3], strides=[3])
    return g.op("Relu", [y], output=block_output(index))


def _scaling(g: _Graph, x: str, scaling: segments.InputScaling) -> str:
  """`segments.InputScaling` on `[batch, samples]`: RMS normalisation, then standardisation."""
  if scaling.rms > 0:
    power = g.op("ReduceMean", [g.op("Mul", [x, x], "square")], "power", axes=[1], keepdims=1)
    level = g.op("Max", [g.op("Sqrt", [power], "rms"), g.const("rms_floor", segments.RMS_FLOOR)],
                 "level")
    x = g.op("Mul", [x, g.op("Div", [g.const("target_rms", scaling.rms), level], "gain")],
             "normalised")
  if scaling.standardize:
    x = g.op("Sub", [x, g.const("audio_mean", scaling.mean)], "centred")
    x = g.op("Mul", [x, g.const("inverse_std", 1.0 / scaling.std)], "standardised")
  return x


def build_model(
    model_config: Any,
    num_classes: int,
    label_type: str,
    input_size: int,
    variables: Mapping[str, Any],
    scaling: segments.InputScaling,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
  """The inference graph of the model `model_config` describes (see the module docstring).

  `variables` holds `params` and `batch_stats` as numpy (or array-like) trees, as
  `checkpointing.load_variables` returns them; `metadata` goes to `metadata_props`.
  """
  m = model_config
  block, head, multi = m.block, m.head, bool(m.multi)
  params, stats = variables["params"], variables["batch_stats"]
  g = _Graph()
  b = _Builder(g, params, stats, float(m.bn_epsilon))
  x = _scaling(g, INPUT, scaling)
  x = g.op("Unsqueeze", [x, g.const("axis1", [1], np.int64)], "ncw")
  pads = (0, 0) if m.front_padding == "valid" else same_pads(input_size, 3, 3)
  x = g.op("Relu", [b.conv_bn(x, params["front_conv"], params["front_bn"], stats["front_bn"],
                               pads, stride=3, hint="front_conv")], output=FRONT_END)
  outputs, width = [], int(m.base_width)
  for i, features in enumerate(models.block_widths(int(m.num_blocks), int(m.base_width))):
    x = b.block(x, i + 1, block, width, features)
    outputs.append(x)
    width = features
  levels = outputs[-models.NUM_MULTI_LEVELS:] if multi else outputs[-1:]
  pools = [g.op("ReduceMax", [level], "global_max", axes=[2], keepdims=0) for level in levels]
  if m.get("global_pool", "max") == "mean_max":
    pools += [g.op("ReduceMean", [level], "global_mean", axes=[2], keepdims=0) for level in levels]
  embedding = g.op("Concat", pools, axis=1, output=EMBEDDING) if len(pools) > 1 else g.op(
      "Identity", pools, output=EMBEDDING)
  if head == "samplecnn":
    y = b.conv_bn(outputs[-1], params["head_conv"], params["head_bn"], stats["head_bn"], (0, 0),
                  hint="head_conv")
    y = g.op("ReduceMax", [g.op("Relu", [y])], "head_max", axes=[2], keepdims=0)
  else:
    y = g.op("Relu", [b.dense(embedding, params["head_dense"], "head_dense", params["head_bn"],
                              stats["head_bn"])])
  logits = b.dense(y, params["logits"], "logits")
  if label_type == "multi_label":
    g.op("Sigmoid", [logits], output=SCORES)
  else:
    g.op("Softmax", [logits], output=SCORES, axis=1)
  graph = helper.make_graph(
      g.nodes, "samplecnn_jax",
      [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [BATCH, input_size])],
      [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, [BATCH, num_classes]),
       helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, [BATCH, None])],
      g.initializers,
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="samplecnn_jax")
  model.ir_version = 8  # Readable by onnxruntime >= 1.10.
  helper.set_model_props(model, dict(metadata or {}))
  onnx.checker.check_model(model, full_check=True)
  return model
