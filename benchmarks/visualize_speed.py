"""Time the filter visualisation of the MTAT-sized SampleCNN (3^9 model) against its FLOPs.

The model: 59049-sample input, front conv + 9 blocks = 10 layers, base width 128 (128, 128,
128, 128, 256 x 6, 512 filters), untrained weights. Each layer's ascent is jitted once; the
table gives compile and ascent seconds, the steps the stop rule let run, the FLOPs of one
compiled step (XLA's cost analysis) and the time those FLOPs take at the matmul rate
measured here at the start (float32 2048 x 2048 jnp.dot), and the ratio of the two.
Targets (issue 11): layers 1-6 at the defaults in under 60 s on a 2-core CPU; layers 7-10
within 2x of their FLOPs' time.

  python benchmarks/visualize_speed.py --layers=1,2,3,4,5,6   # the paper's 729-sample layers
  python benchmarks/visualize_speed.py --layers=7,8,9,10 --steps=2   # deep layers, per step
  python benchmarks/visualize_speed.py --quick                # base width 16: a smoke run

Untrained weights: the stop rule may end a trained model's ascent at other steps, so the
steps column says what was run. Not a test: it asserts nothing and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from samplecnn_jax import config_base, filters, models

TARGET_SECONDS = 60.0  # Layers 1-6, full width, defaults.
TARGET_FLOP_RATIO = 2.0  # Layers 7-10: ascent time / FLOP time at the matmul rate.


def mtat_3_9_config(base_width: int):
  config = config_base.base_config()
  config.sample_rate = 16000
  config.input_size = 59049
  config.num_classes = 50
  config.model.num_blocks = 9
  config.model.base_width = base_width
  return config_base.apply_variant(config, "samplecnn")


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
  """Best-of float32 `size x size` matmul rate on this machine, FLOP/s."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = np.inf
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def step_flops(compiled_step) -> float:
  analysis = compiled_step.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="Base width 16.")
  parser.add_argument("--steps", type=int, default=None, help="Most steps (default: the default).")
  parser.add_argument("--base_width", type=int, default=None, help="Default 128 (16 if --quick).")
  parser.add_argument("--layers", default="1,2,3,4,5,6", help="Comma-separated layers.")
  parser.add_argument("--chunk_size", type=int, default=0, help="Filters per batch; 0 = auto.")
  args = parser.parse_args()

  settings = filters.default_config()
  if args.steps is not None:
    settings.steps = args.steps
  settings.chunk_size = args.chunk_size
  layers = [int(k) for k in args.layers.split(",") if k]
  base_width = args.base_width or (16 if args.quick else 128)
  config = mtat_3_9_config(base_width)
  model = models.create_model(config.model, config.num_classes)
  variables = jax.jit(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, config.input_size)), train=False
  ))()
  rate = matmul_flops_per_second()

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"matmul rate {rate / 1e9:.1f} GFLOP/s")
  print(f"SampleCNN 3^9, base width {base_width}, most steps {settings.steps}, "
        f"input_size {settings.input_size}, chunk_size {settings.chunk_size or 'auto'}")
  header = (f"{'layer':>5} {'filters':>7} {'input':>6} {'steps':>5} {'compile s':>9} "
            f"{'ascent s':>8} {'GFLOP/step':>10} {'FLOP s':>7} {'ratio':>5}")
  print(header + "\n" + "-" * len(header))
  total = total_compile = 0.0
  for layer in layers:
    ascent = filters.LayerAscent(model, variables, layer, settings, config.sample_rate)
    r = ascent.estimate()
    steps = r.activation_trace.shape[0] - 1
    flops = step_flops(ascent.step) * ascent.num_chunks  # Per step over all chunks.
    ascent_seconds = r.seconds - r.compile_seconds
    flop_seconds = flops * steps / rate
    print(f"{layer:>5} {r.estimates.shape[0]:>7} {r.estimates.shape[1]:>6} {steps:>5} "
          f"{r.compile_seconds:>9.2f} {ascent_seconds:>8.2f} {flops / 1e9:>10.2f} "
          f"{flop_seconds:>7.2f} {ascent_seconds / flop_seconds:>5.2f}", flush=True)
    total += r.seconds
    total_compile += r.compile_seconds
  print("-" * len(header))
  print(f"total {total:.1f} s ({total_compile:.1f} s compiling); targets: layers 1-6 at "
        f"full width and defaults < {TARGET_SECONDS:.0f} s, layers 7-10 ratio <= "
        f"{TARGET_FLOP_RATIO:.0f}")


if __name__ == "__main__":
  main()
