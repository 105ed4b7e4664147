"""Fast drop-in layers: max-pool, dropout, batch norm and conv with cheaper backward passes.

Each matches its Flax counterpart (same variables and module paths, same values, gradients
and random masks), so checkpoints and dropout keys do not depend on which is used; they exist
because on XLA:CPU the Flax versions' backward passes dominated a SampleCNN train step (see
docs/benchmarks.md). Nothing here knows about SampleCNN: `models.py` assembles them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _window_max_pool(size: int, length: int, x: jax.Array) -> jax.Array:
  return _window_max_pool_fwd(size, length, x)[0]


def _window_max_pool_fwd(size, length, x):
  pooled = length // size
  # Strided slices (element j of every window) rather than a reshape, which would copy when
  # the length is not a multiple of `size`.
  taps = [jax.lax.slice_in_dim(x, j, j + size * (pooled - 1) + 1, stride=size, axis=1)
          for j in range(size)]
  # Index of the first maximum of each window: the element XLA's select-and-scatter picks.
  best, first = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for j in range(1, size):
    better = taps[j] > best
    best = jnp.where(better, taps[j], best)
    first = jnp.where(better, jnp.int8(j), first)
  return functools.reduce(jnp.maximum, taps), first


def _window_max_pool_bwd(size, length, first, grad):
  batch, pooled, channels = grad.shape
  zero = jnp.zeros_like(grad)
  spread = jnp.stack([jnp.where(first == j, grad, zero) for j in range(size)], axis=2)
  spread = spread.reshape(batch, pooled * size, channels)
  return (jnp.pad(spread, ((0, 0), (0, length - pooled * size), (0, 0))),)


_window_max_pool.defvjp(_window_max_pool_fwd, _window_max_pool_bwd)


def max_pool(x: jax.Array, size: int = 3) -> jax.Array:
  """Max over non-overlapping windows of `size` along time (floor), i.e. `nn.max_pool` VALID.

  Same values and gradients (to the first maximum of a window, as XLA's select-and-scatter)
  as `nn.max_pool(x, (size,), (size,), 'VALID')`, but the backward pass is elementwise and
  keeps only an int8 index per output: on XLA:CPU the reduce-window gradient (an iota and a
  scatter over the whole block input) was about 40% of a SampleCNN train step.
  """
  if x.shape[1] < size:
    return x[:, :0]
  return _window_max_pool(size, x.shape[1], x)


def matmul_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
  """A 1-D `lax.conv_general_dilated` (NWC x WIO) computed as one matmul over shifted inputs.

  A drop-in for `nn.Conv(conv_general_dilated=...)`: same kernel `(k, C_in, C_out)`, same
  padding rules, same result up to float rounding. Windows that do not overlap (stride = k,
  the front conv) are a free reshape; stride 1 concatenates the k shifted copies along
  channels (im2col) so the whole conv is one GEMM. Anything else falls back to XLA's conv.
  """
  dilated = any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
  nwc = lhs.ndim == 3 and rhs.ndim == 3 and dimension_numbers == jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, ("NWC", "WIO", "NWC")
  )
  stride, kernel = window_strides[0], rhs.shape[0]
  if not nwc or dilated or feature_group_count != 1 or stride not in (1, kernel) or kwargs:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs,
    )
  _, c_in, c_out = rhs.shape
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:2], (kernel,), (stride,), padding)
  (low, high), = padding
  x = jnp.pad(lhs, ((0, 0), (low, high), (0, 0)))
  length = (x.shape[1] - kernel) // stride + 1
  if stride == kernel:
    columns = x[:, : length * kernel].reshape(x.shape[0], length, kernel * c_in)
  elif kernel == 1:
    columns = x
  else:
    columns = jnp.concatenate([x[:, k : k + length] for k in range(kernel)], axis=-1)
  return jnp.dot(columns, rhs.reshape(kernel * c_in, c_out), precision=precision)


CONV_IMPLS = {"xla": jax.lax.conv_general_dilated, "matmul": matmul_conv}

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array):
  """Threefry-2x32 (20 rounds) in plain elementwise ops, i.e. JAX's hash, unrolled.

  JAX lowers its own Threefry as a rolled loop on CPU, which materialises the counters of a
  dropout mask five times; written out like this XLA fuses it into the mask's consumer.
  """
  rotl = lambda v, d: (v << jnp.uint32(d)) | (v >> jnp.uint32(32 - d))
  ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = rotl(x2, r) ^ x1
    x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x1, x2


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
  """Bit for bit `jax.random.bernoulli(key, p, shape)` (float32 `p`), fusible on every backend.

  Valid for the default PRNG (partitionable Threefry-2x32) with raw or typed keys; any other
  set-up falls back to `jax.random.bernoulli`, so results never depend on this shortcut.
  """
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
  if (
      "threefry2x32" not in impl
      or not jax.config.jax_threefry_partitionable
      or math.prod(shape) >= 2**32
  ):
    return jax.random.bernoulli(key, p, shape)
  return _threefry_bernoulli(jax.random.key_data(key) if typed else key, float(p), tuple(shape))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _threefry_bernoulli(key_data: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
  counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  bits1, bits2 = _threefry2x32(key_data[0], key_data[1], jnp.zeros_like(counter), counter)
  # jax.random.uniform's float construction: 23 random mantissa bits in [1, 2), minus 1.
  mantissa = ((bits1 ^ bits2) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
  uniform = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)
  return uniform < jnp.float32(p)


class Dropout(nn.Dropout):
  """`nn.Dropout` with the same masks, drawn with the fusible `bernoulli` above.

  On XLA:CPU, Flax's dropout in the Res-2/ReSE-2 blocks took about half of a ReSE-2-Multi
  train step (JAX's rolled Threefry loop over the full activation). The class keeps the
  name `Dropout` so that module paths, and hence the dropout keys, are unchanged.
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng=None):
    call_arg = deterministic  # Flax refuses it at call time if the constructor had it.
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    if self.broadcast_dims:
      return super().__call__(inputs, call_arg, rng)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    mask = bernoulli(rng, keep_prob, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _batch_norm_train(epsilon: float, x: jax.Array, scale: jax.Array, bias: jax.Array):
  return _batch_norm_train_fwd(epsilon, x, scale, bias)[0]


def _batch_norm_train_fwd(epsilon, x, scale, bias):
  # Exactly Flax's training-mode arithmetic (fast variance, float32 statistics).
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, mean_sq = jnp.mean(x32, axes), jnp.mean(jax.lax.square(x32), axes)
  var = jnp.maximum(0.0, mean_sq - jax.lax.square(mean))
  inv = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv * scale) + bias
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  x, mean, inv, scale = residuals
  grad_y, grad_mean, grad_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = math.prod(x.shape[:-1])
  centred = x - mean
  x_hat = centred * inv
  grad_bias = jnp.sum(grad_y, axes)
  grad_scale = jnp.sum(grad_y * x_hat, axes)
  grad_x = (scale * inv) * (grad_y - grad_bias / n - x_hat * (grad_scale / n))
  # The statistics are outputs too (for the running averages); usually their cotangents are 0.
  grad_x = grad_x + grad_mean / n + centred * (2.0 * grad_var / n)
  return grad_x.astype(x.dtype), grad_scale.astype(scale.dtype), grad_bias.astype(scale.dtype)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` whose training-mode backward pass is the closed-form one.

  Same variables, forward values and running averages as Flax's; the gradient is the
  textbook formula (two reductions and one elementwise pass) instead of the autodiff of the
  statistics, about 20% less time per normalisation on XLA:CPU. Gradients agree to float
  rounding, except through a variance clipped at 0 (a constant channel), where Flax's is 0.
  Anything but the plain configuration used here (feature axis last, fast variance, no
  mask or axis_name) is delegated to Flax. The class keeps the name `BatchNorm` so that
  parameter paths, and hence checkpoints, are unchanged.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    call_arg = use_running_average  # Flax refuses it at call time if the constructor had it.
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average
    )
    plain = (
        self.axis in (-1, x.ndim - 1) and self.use_fast_variance and self.use_scale
        and self.use_bias and self.axis_name is None and self.force_float32_reductions
        and mask is None
    )
    if use_running_average or self.is_initializing() or not plain:
      return super().__call__(x, call_arg, mask=mask)
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    y, mean, var = _batch_norm_train(float(self.epsilon), x, scale, bias)
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return jnp.asarray(y, nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


