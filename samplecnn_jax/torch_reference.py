"""A straightforward PyTorch implementation of the sample-level CNNs, the benchmarks' baseline.

It mirrors `samplecnn_jax.models.SampleLevelCNN` layer by layer (same order, widths, paddings,
initialisers, dropout, Keras BatchNorm semantics) and is built from the same `config.model`,
so a benchmark compares the same network. It is written the way a PyTorch user would write
it (channels-first `Conv1d`, `BatchNorm1d`, `MaxPool1d`, eager mode), with no tuning, so it
is a fair baseline rather than a competitor. It lives in the package so that the benchmarks
(`train_step_speed.py`, `inference_speed.py`) and the test that it is the same network
(`tests/test_torch_reference.py`) share it without importing each other. PyTorch is only the
optional `bench` dependency: no other module of `samplecnn_jax/` imports this one.

BatchNorm: Keras/Flax momentum m (running = m * running + (1 - m) * batch) is PyTorch's
momentum 1 - m; epsilon is the same. One known difference: PyTorch updates the running
variance with the unbiased batch variance, Flax with the biased one (same cost).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samplecnn_jax import models


def _he_uniform(weight: torch.Tensor) -> torch.Tensor:
  return nn.init.kaiming_uniform_(weight, a=0.0, nonlinearity="relu")


def _lecun_normal(weight: torch.Tensor) -> torch.Tensor:
  """Flax's lecun_normal: truncated normal (+-2 std), variance 1 / fan_in after truncation."""
  fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
  std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
  return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


INITIALIZERS = {
    "he_uniform": _he_uniform,
    "glorot_uniform": nn.init.xavier_uniform_,
    "lecun_normal": _lecun_normal,
}


def _conv(c_in: int, c_out: int, kernel: int, init: str, stride: int = 1) -> nn.Conv1d:
  """Conv1d with the reference initialiser and a zero bias; padding is applied by the caller."""
  conv = nn.Conv1d(c_in, c_out, kernel, stride=stride)
  INITIALIZERS[init](conv.weight)
  nn.init.zeros_(conv.bias)
  return conv


def _linear(n_in: int, n_out: int) -> nn.Linear:
  dense = nn.Linear(n_in, n_out)
  nn.init.xavier_uniform_(dense.weight)
  nn.init.zeros_(dense.bias)
  return dense


def _same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA/TF 'SAME' padding (the extra sample, if any, goes on the right)."""
  out = -(-length // stride)
  total = max((out - 1) * stride + kernel - length, 0)
  return total // 2, total - total // 2


class SqueezeExcitation(nn.Module):
  def __init__(self, channels: int, ratio: float):
    super().__init__()
    hidden = max(1, int(round(ratio * channels)))
    self.squeeze = _linear(channels, hidden)
    self.excite = _linear(hidden, channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    e = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=2)))))
    return x * e[:, :, None]


class SampleBlock(nn.Module):
  """basic/SE: conv-BN-ReLU-pool[-SE]; Res-n/ReSE-n: residual with the pool after the add."""

  def __init__(self, kind: str, c_in: int, c_out: int, cfg: ml_collections.ConfigDict):
    super().__init__()
    self.kind = kind
    bn = lambda c: nn.BatchNorm1d(c, eps=cfg.bn_epsilon, momentum=1.0 - cfg.bn_momentum)
    if kind in ("basic", "se"):
      self.convs = nn.ModuleList([_conv(c_in, c_out, 3, cfg.conv_init)])
      self.norms = nn.ModuleList([bn(c_out)])
      self.shortcut = None
    else:
      n = int(kind[-1])
      self.convs = nn.ModuleList(
          [_conv(c_in if i == 0 else c_out, c_out, 3, cfg.conv_init) for i in range(n)]
      )
      self.norms = nn.ModuleList([bn(c_out) for _ in range(n)])
      self.shortcut = None
      if c_in != c_out:
        self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, "glorot_uniform"), bn(c_out))
      self.dropout = nn.Dropout(cfg.block_dropout)
    self.se = SqueezeExcitation(c_out, cfg.se_ratio) if kind in ("se", "rese1", "rese2") else None
    self.pool = nn.MaxPool1d(3, stride=3)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.kind in ("basic", "se"):
      y = self.pool(F.relu(self.norms[0](self.convs[0](F.pad(x, (1, 1))))))
      return self.se(y) if self.se is not None else y
    shortcut = x if self.shortcut is None else self.shortcut(x)
    y = x
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
      y = norm(conv(F.pad(y, (1, 1))))
      if i < len(self.convs) - 1:
        y = self.dropout(F.relu(y))
    if self.se is not None:
      y = self.se(y)
    return self.pool(F.relu(y + shortcut))


class SampleLevelCNN(nn.Module):
  """Strided 3-sample front conv, pooled blocks, then the SampleCNN or global-max-pool head."""

  def __init__(self, cfg: ml_collections.ConfigDict, num_classes: int):
    super().__init__()
    models.create_model(cfg, num_classes)  # Same validation (and errors) as the JAX model.
    if cfg.get("global_pool", "max") != "max":
      raise NotImplementedError("The PyTorch twin has the paper's global max pool only.")
    self.cfg = cfg
    base = cfg.base_width
    bn = lambda c: nn.BatchNorm1d(c, eps=cfg.bn_epsilon, momentum=1.0 - cfg.bn_momentum)
    self.front_conv = _conv(1, base, 3, cfg.conv_init, stride=3)
    self.front_bn = bn(base)
    widths = models.block_widths(cfg.num_blocks, base)
    c_in = base
    blocks = []
    for width in widths:
      blocks.append(SampleBlock(cfg.block, c_in, width, cfg))
      c_in = width
    self.blocks = nn.ModuleList(blocks)
    self.head_dropout = nn.Dropout(cfg.head_dropout)
    if cfg.head == "samplecnn":
      head_width = cfg.head_width or widths[-1]
      self.head_conv = _conv(widths[-1], head_width, 1, cfg.conv_init)
    else:
      levels = widths[-models.NUM_MULTI_LEVELS :] if cfg.multi else widths[-1:]
      head_width = cfg.head_width or sum(levels)
      self.head_dense = _linear(sum(levels), head_width)
    self.head_bn = bn(head_width)
    self.logits = _linear(head_width, num_classes)

  def forward(self, waveform: torch.Tensor) -> torch.Tensor:
    """Waveforms `(batch, samples)` to logits `(batch, num_classes)`."""
    x = waveform[:, None, :]
    if self.cfg.front_padding == "same":
      x = F.pad(x, _same_padding(x.shape[-1], 3, 3))
    x = F.relu(self.front_bn(self.front_conv(x)))
    outputs = []
    for block in self.blocks:
      x = block(x)
      outputs.append(x)
    if self.cfg.head == "samplecnn":
      x = self.head_dropout(F.relu(self.head_bn(self.head_conv(outputs[-1]))))
      x = x.amax(dim=2)
    else:
      levels = outputs[-models.NUM_MULTI_LEVELS :] if self.cfg.multi else outputs[-1:]
      x = torch.cat([level.amax(dim=2) for level in levels], dim=1)
      x = self.head_dropout(F.relu(self.head_bn(self.head_dense(x))))
    return self.logits(x)


def count_params(model: nn.Module) -> int:
  """Trainable scalars (BatchNorm running statistics are buffers, as in Flax's batch_stats)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_model(config: ml_collections.ConfigDict) -> SampleLevelCNN:
  """The PyTorch twin of `models.create_model(config.model, config.num_classes)`."""
  return SampleLevelCNN(config.model, config.num_classes)


def create_optimizer(config: ml_collections.ConfigDict, model: nn.Module) -> torch.optim.SGD:
  """The paper's optimiser: SGD with Nesterov momentum (lr and momentum from the config)."""
  return torch.optim.SGD(
      model.parameters(), lr=config.learning_rate, momentum=config.momentum,
      nesterov=config.nesterov,
  )


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, label_type: str) -> torch.Tensor:
  """Mean sigmoid BCE over classes and batch, or softmax CE on one-hot labels (as train.py)."""
  if label_type == "multi_label":
    return F.binary_cross_entropy_with_logits(logits, labels)
  return F.cross_entropy(logits, labels)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, audio: torch.Tensor,
    labels: torch.Tensor, label_type: str,
) -> torch.Tensor:
  """One optimisation step in train mode; returns the (detached) loss."""
  model.train()
  optimizer.zero_grad(set_to_none=True)
  loss = loss_fn(model(audio), labels, label_type)
  loss.backward()
  optimizer.step()
  return loss.detach()


def compiled_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, label_type: str, mode: str = "default",
):
  """`train_step` the way a performance-minded PyTorch user writes it: `torch.compile`d.

  The forward pass and the loss are one compiled graph (AOTAutograd also compiles its
  backward), and the optimiser step is compiled separately, as in PyTorch's "compiling the
  optimizer" recipe; `zero_grad` and `backward()` stay eager calls. `mode` is passed to
  `torch.compile` (`"default"`, `"max-autotune-no-cudagraphs"`, ...). The first calls compile
  (and the second recompiles the optimiser once its momentum buffers exist).
  """

  def forward_loss(audio: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss_fn(model(audio), labels, label_type)

  compiled_loss = torch.compile(forward_loss, mode=mode)

  @torch.compile(mode=mode)
  def optimizer_step() -> None:
    optimizer.step()

  def step(audio: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = compiled_loss(audio, labels)
    loss.backward()
    optimizer_step()
    return loss.detach()

  return step


def load_flax_variables(model: SampleLevelCNN, variables: dict) -> None:
  """Copies a Flax model's `params` and `batch_stats` into `model` (for equivalence tests).

  Flax names the layers inside a block by creation order (`Conv_0`, `BatchNorm_0`, ...);
  the projection shortcut, when present, is created first.
  """
  params, stats = variables["params"], variables["batch_stats"]

  def put(tensor: torch.Tensor, value) -> None:
    with torch.no_grad():
      tensor.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))

  def conv(module: nn.Conv1d, p) -> None:
    put(module.weight, np.asarray(p["kernel"]).transpose(2, 1, 0))
    put(module.bias, p["bias"])

  def dense(module: nn.Linear, p) -> None:
    put(module.weight, np.asarray(p["kernel"]).T)
    put(module.bias, p["bias"])

  def norm(module: nn.BatchNorm1d, p, s) -> None:
    put(module.weight, p["scale"])
    put(module.bias, p["bias"])
    put(module.running_mean, s["mean"])
    put(module.running_var, s["var"])

  conv(model.front_conv, params["front_conv"])
  norm(model.front_bn, params["front_bn"], stats["front_bn"])
  for i, block in enumerate(model.blocks):
    p, s = params[f"block{i + 1}"], stats.get(f"block{i + 1}", {})
    index = 0
    if block.shortcut is not None:
      conv(block.shortcut[0], p["Conv_0"])
      norm(block.shortcut[1], p["BatchNorm_0"], s["BatchNorm_0"])
      index = 1
    for j, (c, n) in enumerate(zip(block.convs, block.norms, strict=True)):
      conv(c, p[f"Conv_{index + j}"])
      norm(n, p[f"BatchNorm_{index + j}"], s[f"BatchNorm_{index + j}"])
    if block.se is not None:
      # Flax's SE builds its output Dense first (`dense(C)(relu(dense(h)(x)))`).
      dense(block.se.excite, p["SqueezeExcitation_0"]["Dense_0"])
      dense(block.se.squeeze, p["SqueezeExcitation_0"]["Dense_1"])
  if model.cfg.head == "samplecnn":
    conv(model.head_conv, params["head_conv"])
  else:
    dense(model.head_dense, params["head_dense"])
  norm(model.head_bn, params["head_bn"], stats["head_bn"])
  dense(model.logits, params["logits"])
