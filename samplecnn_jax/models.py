"""Sample-level CNNs for raw waveforms: SampleCNN and the SE / Res-n / ReSE-n (+Multi) family.

The models are pure Flax Linen modules: they take a batch of waveforms `(batch, samples)`
and return logits `(batch, num_classes)` in float32; `probabilities` turns those into the
scores that evaluation and prediction read. Losses and anything that touches data or
devices live elsewhere.

Architecture facts (layer order, initialisers, Keras BatchNorm defaults, channel rule)
follow `shared/reference/MODELS.md` sections 1 and 8; where the published code bases
disagree (SE ratio, front-conv padding), the choice is a field of `config.model`.

Pooling, dropout, batch norm and conv come from `samplecnn_jax.layers`: drop-in replacements
for Flax's layers (same variables, values and gradients) whose backward passes are much
cheaper on XLA:CPU; see docs/benchmarks.md for what each one buys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from samplecnn_jax import layers

BLOCK_TYPES = ("basic", "se", "res1", "res2", "rese1", "rese2")
HEAD_TYPES = ("samplecnn", "gmp")
GLOBAL_POOLS = ("max", "mean_max")  # The gmp head's pooling over time (model.global_pool).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INITIALIZERS = {
    "he_uniform": nn.initializers.he_uniform,
    "glorot_uniform": nn.initializers.xavier_uniform,
    "lecun_normal": nn.initializers.lecun_normal,
}
ModuleDef = Callable[..., nn.Module]  # A module class with some fields bound (a partial).
NUM_MULTI_LEVELS = 3  # The Multi head concatenates the global max pools of the last 3 blocks.

# Name under which every layer sows its output before the final ReLU (pooled like the output,
# shortcut included, SE gate of `se` blocks excluded) into the "intermediates" collection.
PRE_RELU = "pre_relu"
EMBEDDING = "embedding"  # Sown by the full model: the pooled features its head reads.


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named architecture: which block, which head, multi-level features or not."""

  block: str
  head: str
  multi: bool


def _variants() -> dict[str, Variant]:
  variants = {"samplecnn": Variant("basic", "samplecnn", False)}
  for block in BLOCK_TYPES:
    variants[block] = Variant(block, "gmp", False)
    variants[f"{block}_multi"] = Variant(block, "gmp", True)
  # The paper's spelling of its improved model.
  variants["rese2multi"] = variants["rese2_multi"]
  return variants


VARIANTS: dict[str, Variant] = _variants()


def get_variant(name: str) -> Variant:
  """Looks up a named variant, naming the valid choices when the name is unknown."""
  try:
    return VARIANTS[name]
  except KeyError:
    raise ValueError(
        f"Unknown model variant {name!r}. Valid variants: {', '.join(sorted(VARIANTS))}."
    ) from None


def block_widths(num_blocks: int, base_width: int) -> list[int]:
  """Channels of each pooled block: base, base, then 2x base, and 4x base for the last block.

  This is the reference rule (MODELS.md 1.1): 9 blocks give
  [128, 128, 256, 256, 256, 256, 256, 256, 512].
  """
  widths = [base_width if i < 2 else 2 * base_width for i in range(num_blocks)]
  widths[-1] = 4 * base_width
  return widths


def feature_lengths(input_size: int, num_blocks: int, front_padding: str = "valid") -> list[int]:
  """Temporal length after the strided front conv and after each pooled block."""
  if front_padding == "valid":
    length = (input_size - 3) // 3 + 1 if input_size >= 3 else 0
  else:
    length = -(-input_size // 3)
  lengths = [length]
  for _ in range(num_blocks):
    length //= 3
    lengths.append(length)
  return lengths


def deepest_cut_block(num_blocks: int, multi: bool) -> int:
  """The deepest block whose output `SampleLevelCNN(cut=...)` can start from: the head reads
  the last block's output (the last NUM_MULTI_LEVELS blocks' with a Multi head)."""
  return num_blocks - (NUM_MULTI_LEVELS if multi else 1) + 1


def check_input_size(input_size: int, num_blocks: int, front_padding: str = "valid") -> None:
  """Raises a ValueError naming what fits when `input_size` shrinks to zero in the trunk."""
  lengths = feature_lengths(input_size, num_blocks, front_padding)
  if min(lengths) >= 1:
    return
  fits = sum(1 for length in lengths[1:] if length >= 1)
  needed = 3 ** (num_blocks + 1)
  raise ValueError(
      f"input_size={input_size} is too short for num_blocks={num_blocks}: the temporal length "
      f"reaches 0 (lengths after the front conv and each block: {lengths}). The largest block "
      f"count that fits {input_size} samples is num_blocks={fits}; {num_blocks} blocks need "
      f"input_size >= {needed}. (num_blocks counts the pooled blocks after the strided front "
      f"conv; the paper's count includes the front conv, i.e. is one more.)"
  )


class SqueezeExcitation(nn.Module):
  """Channel gating: global average over time -> Dense(h, ReLU) -> Dense(C, sigmoid) -> scale."""

  ratio: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = max(1, int(round(self.ratio * channels)))
    dense = lambda n: nn.Dense(n, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype)
    squeezed = jnp.mean(x, axis=1)
    excitation = nn.sigmoid(dense(channels)(nn.relu(dense(hidden)(squeezed))))
    return x * excitation[:, None, :].astype(x.dtype)


class SampleBlock(nn.Module):
  """One pooled block: basic/SE (conv-BN-ReLU-pool[-SE]) or Res-n/ReSE-n (residual, pool after add).

  `conv` and `norm` are the network's conv and BatchNorm with its settings bound
  (`SampleLevelCNN.layer_factories`), so a block holds only what is its own.
  """

  kind: str
  features: int
  se_ratio: float
  dropout: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv_bn = lambda y, k=3, **kw: self.norm()(self.conv(self.features, (k,), **kw)(y))
    se = lambda y: SqueezeExcitation(self.se_ratio, y.dtype)(y)

    if self.kind in ("basic", "se"):
      # Pooling before the ReLU gives the same values (both are monotone) and lets the block
      # expose its pre-activation for tools such as filter visualisation.
      y = layers.max_pool(conv_bn(x), 3)
      self.sow("intermediates", PRE_RELU, y)
      y = nn.relu(y)
      return se(y) if self.kind == "se" else y

    num_convs = int(self.kind[-1])
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = conv_bn(x, k=1, kernel_init=INITIALIZERS["glorot_uniform"]())
    y = x
    for i in range(num_convs):
      y = conv_bn(y)
      if i < num_convs - 1:
        y = layers.Dropout(self.dropout, deterministic=not train)(nn.relu(y))
    if self.kind.startswith("rese"):
      y = se(y)
    y = layers.max_pool(y + shortcut, 3)
    self.sow("intermediates", PRE_RELU, y)
    return nn.relu(y)


class SampleLevelCNN(nn.Module):
  """Strided 3-sample conv front end, `num_blocks` pooled blocks, then a classifier head.

  Attributes mirror `config.model` (see `configs/` for what each means).
  """

  num_classes: int
  block: str = "basic"
  head: str = "samplecnn"
  multi: bool = False
  num_blocks: int = 9
  base_width: int = 128
  head_width: int = 0
  se_ratio: float = 16.0
  block_dropout: float = 0.2
  head_dropout: float = 0.5
  front_padding: str = "valid"
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  conv_init: str = "he_uniform"
  dtype: Any = jnp.float32
  remat: bool = False
  conv_impl: str = "xla"
  global_pool: str = "max"

  def layer_factories(self, train: bool) -> tuple[ModuleDef, ModuleDef]:
    """The network's conv and BatchNorm with every setting but the per-layer ones bound.

    `conv(features, kernel_size, ...)` and `norm(...)`, as flax's imagenet example: the one
    place the initialiser, dtype, conv kernels and BatchNorm statistics are chosen.
    """
    conv = functools.partial(
        nn.Conv,
        kernel_init=INITIALIZERS[self.conv_init](),
        dtype=self.dtype,
        conv_general_dilated=layers.CONV_IMPLS[self.conv_impl],
    )
    norm = functools.partial(
        layers.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
    )
    return conv, norm

  def trunk(self, waveform: jax.Array | None, train: bool, num_layers: int | None = None,
            cut: tuple[int, jax.Array] | None = None) -> list[jax.Array]:
    """Outputs of the front conv and of each pooled block, `(batch, length, channels)` each.

    `num_layers` stops after that many layers (front conv = layer 1), for callers such as
    filter visualisation that probe shallow layers with short inputs. `cut=(k, output)` starts
    from block k's output instead of a waveform (k = 0: the front conv's), and the list then
    starts with it: `stream` reuses that output between overlapping windows (`incremental`).
    """
    conv, norm = self.layer_factories(train)
    if cut is None:
      first = 0
      x = waveform.astype(self.dtype)[..., None]
      x = conv(
          self.base_width, (3,), strides=(3,), padding=self.front_padding.upper(),
          name="front_conv"
      )(x)
      x = norm(name="front_bn")(x)
      self.sow("intermediates", f"front_{PRE_RELU}", x)
      x = nn.relu(x)
    else:
      first, x = cut
    block_cls = nn.remat(SampleBlock, static_argnums=(2,)) if self.remat else SampleBlock
    outputs = [x]
    widths = block_widths(self.num_blocks, self.base_width)
    for i, width in enumerate(widths[: None if num_layers is None else num_layers - 1]):
      if i < first:
        continue
      x = block_cls(
          self.block, width, self.se_ratio, self.block_dropout, conv, norm, name=f"block{i + 1}"
      )(x, train)
      outputs.append(x)
    return outputs

  @nn.compact
  def __call__(
      self, waveform: jax.Array | None, train: bool = False, num_layers: int | None = None,
      cut: tuple[int, jax.Array] | None = None,
  ) -> jax.Array | list[jax.Array]:
    """Maps waveforms `(batch, samples)` to float32 logits `(batch, num_classes)`.

    With `num_layers` set, returns instead the list of the first `num_layers` layer outputs
    (front conv = layer 1, block i = layer i + 1) and builds no head. With `cut=(k, output)`
    (and no waveform), computes the logits from block k's output: the blocks after it and the
    head (`trunk`).
    """
    if cut is not None:
      deepest = deepest_cut_block(self.num_blocks, self.multi)
      if not 0 <= cut[0] <= deepest:
        raise ValueError(f"cut at block {cut[0]}: the head reads the last "
                         f"{self.num_blocks - deepest + 1} block(s) of {self.num_blocks}; cut "
                         f"at block <= {deepest}.")
      outputs = self.trunk(None, train, cut=cut)  # Block k's output, then the later blocks'.
      return self._head(outputs if cut[0] > 0 else outputs[1:], train)
    if waveform.ndim != 2:
      raise ValueError(f"Expected waveforms of shape (batch, samples), got {waveform.shape}.")
    if num_layers is not None:
      if not 1 <= num_layers <= self.num_blocks + 1:
        raise ValueError(f"num_layers must be in [1, {self.num_blocks + 1}], got {num_layers}.")
      check_input_size(waveform.shape[1], num_layers - 1, self.front_padding)
      return self.trunk(waveform, train, num_layers)
    check_input_size(waveform.shape[1], self.num_blocks, self.front_padding)
    return self._head(self.trunk(waveform, train)[1:], train)

  def _head(self, outputs: list[jax.Array], train: bool) -> jax.Array:
    """Logits from the last blocks' outputs (`outputs[-1]` is the last block's)."""
    conv, norm = self.layer_factories(train)
    dense = lambda n, name: nn.Dense(
        n, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype, name=name
    )
    head_activation = lambda y: layers.Dropout(self.head_dropout, deterministic=not train)(
        nn.relu(norm(name="head_bn")(y))
    )
    # What the head reads, pooled over time to one vector per input: the embedding that
    # `predict --embeddings` averages over a file's segments (the concatenated global max
    # pools for the gmp head; the last block's global max pool for the SampleCNN head).
    levels = outputs[-NUM_MULTI_LEVELS:] if self.multi else outputs[-1:]
    # "mean_max" adds each level's mean over time to its max: the max finds the strongest
    # moment, the mean summarises the whole segment (as MFCC means do for timbre).
    pools = [jnp.max(level, axis=1) for level in levels]
    if self.global_pool == "mean_max":
      pools += [jnp.mean(level.astype(jnp.float32), axis=1).astype(level.dtype)
                for level in levels]
    pooled = jnp.concatenate(pools, axis=-1)
    self.sow("intermediates", EMBEDDING, pooled.astype(jnp.float32))
    if self.head == "samplecnn":
      # SMC 2017 head: 1x1 conv on the last block, then a global max over what length remains
      # (exactly 1 for the 3^9 model, where this is the published head).
      width = self.head_width or outputs[-1].shape[-1]
      x = jnp.max(head_activation(conv(width, (1,), name="head_conv")(outputs[-1])), axis=1)
    else:
      x = head_activation(dense(self.head_width or pooled.shape[-1], "head_dense")(pooled))
    return dense(self.num_classes, "logits")(x).astype(jnp.float32)


# config.model field -> (what its values are called in error messages, the valid values).
CHOICES: dict[str, tuple[str, Collection[str]]] = {
    "block": ("Valid blocks", BLOCK_TYPES),
    "head": ("Valid heads", HEAD_TYPES),
    "dtype": ("Valid dtypes", DTYPES),
    "conv_init": ("Valid", INITIALIZERS),
    "conv_impl": ("Valid", layers.CONV_IMPLS),
    "front_padding": ("Valid", ("valid", "same")),
    "global_pool": ("Valid global pools", GLOBAL_POOLS),
}
# Fields a config saved before they existed may lack, with the behaviour it was trained with.
OPTIONAL_FIELDS = {"conv_impl": "xla", "global_pool": "max"}


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> SampleLevelCNN:
  """Builds the model that `config.model` describes, checking every choice up front."""
  fields = [f.name for f in dataclasses.fields(SampleLevelCNN)]
  fields = [f for f in fields if f not in ("num_classes", "parent", "name")]  # From config.model.
  cfg = {f: model_config.get(f, OPTIONAL_FIELDS.get(f)) for f in fields}
  for field, (valid, choices) in CHOICES.items():
    if cfg[field] not in choices:
      raise ValueError(f"Unknown {field} {cfg[field]!r}. {valid}: {', '.join(choices)}.")
  if cfg["num_blocks"] < 1:
    raise ValueError(f"num_blocks must be >= 1, got {cfg['num_blocks']}.")
  if cfg["multi"] and (cfg["head"] != "gmp" or cfg["num_blocks"] < NUM_MULTI_LEVELS):
    raise ValueError(
        f"multi=True needs head='gmp' and num_blocks >= {NUM_MULTI_LEVELS} "
        f"(got head={cfg['head']!r}, num_blocks={cfg['num_blocks']})."
    )
  if cfg["global_pool"] != "max" and cfg["head"] != "gmp":
    raise ValueError(f"global_pool={cfg['global_pool']!r} needs head='gmp' (the SampleCNN head "
                     f"pools its own 1x1 conv), got head={cfg['head']!r}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  check_input_size(model_config.input_size, cfg["num_blocks"], cfg["front_padding"])
  return SampleLevelCNN(num_classes=num_classes, **{**cfg, "dtype": DTYPES[cfg["dtype"]]})


def probabilities(logits: jax.Array, label_type: str) -> jax.Array:
  """Class scores from logits: sigmoid for multi_label, softmax for multi_class."""
  return nn.sigmoid(logits) if label_type == "multi_label" else nn.softmax(logits)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (works on arrays and ShapeDtypeStructs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def abstract_variables(
    model: nn.Module, input_size: int, batch_size: int = 1
) -> dict[str, Any]:
  """Shapes of `model`'s variables without allocating or compiling anything."""
  shape = jax.ShapeDtypeStruct((batch_size, input_size), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), shape)


def pre_relu(intermediates: dict[str, Any], layer: int) -> jax.Array:
  """Layer `layer`'s output before its final ReLU, `(batch, length, channels)`.

  Reads what the layers sow when applied with `mutable=["intermediates"]` (1 = front conv,
  i + 1 = block i): the batch-normalised front conv, the pooled BN output of basic/SE
  blocks (the SE gate, a positive per-channel scale after the ReLU, left out), and the
  pooled sum of main path and shortcut of Res/ReSE blocks. ReLU of it is the layer output
  (for `se`, before the gate).
  """
  if layer == 1:
    return intermediates[f"front_{PRE_RELU}"][0]
  return intermediates[f"block{layer - 1}"][PRE_RELU][0]


def layer_names(model: SampleLevelCNN) -> Sequence[str]:
  """Names of the convolutional layers in input order: the front conv, then each block.

  Index k of this list is layer k + 1, i.e. `model.apply(..., num_layers=k + 1)[-1]`.
  """
  return ["front_conv"] + [f"block{i + 1}" for i in range(model.num_blocks)]
