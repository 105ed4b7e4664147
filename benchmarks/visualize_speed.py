"""Time the filter visualisation of every layer of the MTAT-sized SampleCNN (3^9 model).

The model: 59049-sample input, front conv + 9 blocks = 10 layers, base width 128 (128, 128,
128, 128, 256 x 6, 512 filters: 2,432 in all), untrained weights (the time does not depend
on their values). Each layer's ascent is jitted once; the table splits compile time from
ascent time and the total is compared with the 60-s target of the issue (2-core CPU,
default step count).

  python benchmarks/visualize_speed.py                 # full size, default steps (slow on CPU)
  python benchmarks/visualize_speed.py --steps=2       # full size, projects the default steps
  python benchmarks/visualize_speed.py --layers=1,2,3,4,5,6   # the 729-sample layers only
  python benchmarks/visualize_speed.py --quick         # base width 16, 5 steps: a smoke run

Not a test: it asserts nothing and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp

from samplecnn_jax import config_base, models, visualize

TARGET_SECONDS = 60.0


def mtat_3_9_config(base_width: int):
  config = config_base.base_config()
  config.sample_rate = 16000
  config.input_size = 59049
  config.num_classes = 50
  config.model.num_blocks = 9
  config.model.base_width = base_width
  return config_base.apply_variant(config, "samplecnn")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="Base width 16 and 5 steps.")
  parser.add_argument("--steps", type=int, default=None, help="Ascent steps (default: 20).")
  parser.add_argument("--base_width", type=int, default=None, help="Default 128 (16 if --quick).")
  parser.add_argument("--layers", default="", help="Comma-separated layers (default: all 10).")
  parser.add_argument("--chunk_size", type=int, default=0, help="Filters per batch; 0 = auto.")
  args = parser.parse_args()

  default_steps = visualize.default_config().steps
  settings = visualize.default_config()
  settings.steps = args.steps if args.steps is not None else (5 if args.quick else default_steps)
  settings.chunk_size = args.chunk_size
  settings.layers = tuple(int(k) for k in args.layers.split(",") if k)
  base_width = args.base_width or (16 if args.quick else 128)
  config = mtat_3_9_config(base_width)
  model = models.create_model(config.model, config.num_classes)
  variables = jax.jit(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, config.input_size)), train=False
  ))()

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
  print(f"SampleCNN 3^9, base width {base_width}, steps {settings.steps}, "
        f"input_size {settings.input_size}, chunk_size {settings.chunk_size or 'auto'}")
  header = f"{'layer':>5} {'name':>10} {'filters':>7} {'input':>6} {'compile s':>9} {'ascent s':>8}"
  print(header + f" {'total s':>8}\n" + "-" * (len(header) + 9))

  def report(r: visualize.LayerFilters):
    ascent = r.seconds - r.compile_seconds
    print(f"{r.layer:>5} {r.name:>10} {r.estimates.shape[0]:>7} {r.estimates.shape[1]:>6} "
          f"{r.compile_seconds:>9.2f} {ascent:>8.2f} {r.seconds:>8.2f}", flush=True)

  results = visualize.visualize_filters(model, variables, settings, config.sample_rate, report)
  total = sum(r.seconds for r in results)
  compile_total = sum(r.compile_seconds for r in results)
  filters = sum(r.estimates.shape[0] for r in results)
  print("-" * (len(header) + 9))
  print(f"total: {filters} filters in {total:.1f} s ({compile_total:.1f} s compiling)")
  if settings.steps and settings.steps != default_steps:
    projected = compile_total + (total - compile_total) * default_steps / settings.steps
    print(f"projected at the default {default_steps} steps: {projected:.1f} s")
  else:
    projected = total
  full = base_width == 128 and not settings.layers
  verdict = "under" if projected < TARGET_SECONDS else "OVER"
  print(f"target: all filters of all layers, full size, default steps, 2-core CPU < "
        f"{TARGET_SECONDS:.0f} s -> {projected:.1f} s is {verdict} the target"
        + ("" if full else " (not the full-size, all-layer run: not comparable)"))


if __name__ == "__main__":
  main()
