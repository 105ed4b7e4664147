"""Train-step throughput, FLOP/s and peak memory of the JAX models against PyTorch.

For each dataset config (mtat, speech_commands, dcase) and model variant it measures, in one
process and alternating round by round so that both see the same machine load:
  * JAX: the real `train.compile_steps` step (jit over a 1-device mesh, donated state),
    compiled ahead of time, blocking on the new state each step;
  * PyTorch: `samplecnn_jax/torch_reference.py`, the same architecture and optimiser, eager
    and `torch.compile`d (inductor; `--torch-modes` picks the modes), compile time apart.
It reports examples/s (median over rounds), the step's FLOPs from XLA's cost analysis
divided by its measured time, the FLOP/s of a large matmul measured in the same run, and
the train step's peak memory at the benchmark batch, measured for each framework in a fresh
subprocess (peak RSS minus the RSS after imports and model set-up; XLA's own memory
analysis is shown too). On a GPU backend the JAX model computes in bfloat16 by default
(`--dtype float32` for float32; PyTorch, when it has CUDA, under bfloat16 autocast) and the
step's FLOP/s is given as a fraction of both a bfloat16 and a float32 matmul.

It is a measurement script, not a test; the figures it prints go to
docs/benchmarks.md. PyTorch is the optional `bench` dependency.

  python benchmarks/train_step_speed.py --quick
  python benchmarks/train_step_speed.py --torch-modes eager,default,max-autotune-no-cudagraphs
  python benchmarks/train_step_speed.py                      # all configs, full rounds
  python benchmarks/train_step_speed.py --set model.remat=True --configs mtat
  python benchmarks/train_step_speed.py --plain-flax pool,dropout,batchnorm  # before the fast layers
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # Run as a script: make `benchmarks` and the repo importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# On a GPU, JAX would otherwise reserve most of the memory and starve PyTorch in this process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from samplecnn_jax import layers, models, sharding, testing, train

CONFIGS = ("mtat", "speech_commands", "dcase")
VARIANTS = ("samplecnn", "rese2_multi")
TORCH_MODES = ("eager", "default", "max-autotune-no-cudagraphs")  # eager or torch.compile modes.
COMPILE_WARMUP_STEPS = 3  # torch.compile: the first calls compile, the 2nd recompiles the optimiser.
MATMUL_SIZE = 4096


# --- Set-up --------------------------------------------------------------------------------


def build_config(name: str, variant: str, batch: int, overrides, se_ratio: float | None,
                 dtype: str | None = None):
  config = testing.load_config(name, variant)
  config.batch_size = batch
  if se_ratio is not None:
    config.model.se_ratio = se_ratio
  config.model.dtype = dtype or ("bfloat16" if on_gpu() else "float32")
  common.apply_overrides(config, overrides)
  return config


def use_plain_flax_layers(names: list[str]) -> None:
  """Swaps the model's fast layers back to Flax's own, to measure what each one gains.

  `pool`: `nn.max_pool` (reduce-window gradient) instead of `layers.max_pool`; `dropout`:
  `nn.Dropout` (JAX's rolled Threefry on CPU) instead of `layers.Dropout`; `batchnorm`:
  `nn.BatchNorm` (autodiff backward) instead of `layers.BatchNorm`. Same results.
  """
  import flax.linen as nn

  for name in names:
    if name == "pool":
      layers.max_pool = lambda x, size=3: nn.max_pool(x, (size,), (size,), padding="VALID")
    elif name == "dropout":
      layers.Dropout = nn.Dropout
    elif name == "batchnorm":
      layers.BatchNorm = nn.BatchNorm
    else:
      raise ValueError(f"--plain-flax takes pool, dropout, batchnorm; got {name!r}.")


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def fake_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of noise waveforms and valid labels (the step's cost does not depend on values)."""
  rng = np.random.default_rng(seed)
  audio = rng.standard_normal((config.batch_size, config.input_size), np.float32) * 0.1
  if config.label_type == "multi_label":
    labels = (rng.random((config.batch_size, config.num_classes)) < 0.1).astype(np.float32)
  else:
    labels = np.eye(config.num_classes, dtype=np.float32)[
        rng.integers(0, config.num_classes, config.batch_size)
    ]
  return {"audio": audio, "label": labels}


def one_device_mesh() -> jax.sharding.Mesh:
  auto = (jax.sharding.AxisType.Auto,)
  return jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=auto)


def conv_dot_flops(jaxpr: jax.extend.core.Jaxpr) -> float:
  """FLOPs of the convolutions and matmuls in a jaxpr (2 per multiply-add), sub-jaxprs included.

  XLA's cost analysis also counts every elementwise op (BatchNorm, ReLU, the dropout hash)
  as FLOPs; this count is the model's arithmetic alone, the usual basis of utilisation.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
      window = np.prod([rhs.shape[d] for d in spec[2:]])
      total += 2.0 * np.prod(out.shape) * rhs.shape[spec[1]] * window
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
      total += 2.0 * np.prod(out.shape) * np.prod([lhs.shape[d] for d in lhs_contract])
    repeat = eqn.params.get("length", 1) if name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, list | tuple) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += repeat * conv_dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += repeat * conv_dot_flops(sub)
  return total


class JaxStep:
  """The compiled train step with its state and batch; `run(n)` does n blocking steps."""

  def __init__(self, config, batch: dict[str, np.ndarray]):
    self.mesh = one_device_mesh()
    model = models.create_model(config.model, config.num_classes)
    state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(0)))
    self.model = model
    self.state = sharding.replicate(state, self.mesh)
    self.batch = sharding.global_batch(batch, self.mesh)
    self.num_params = models.count_params(state.params)
    self.config = config

  def compile(self) -> None:
    start = time.perf_counter()
    steps = train.compile_steps(self.config, self.mesh, self.model)
    self.compiled = steps.train_step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    self.flops = float(cost["flops"])
    step = functools.partial(train.train_step, config=self.config)
    self.model_flops = conv_dot_flops(jax.make_jaxpr(step)(self.state, self.batch).jaxpr)
    mem = self.compiled.memory_analysis()
    self.xla_memory_mb = (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    ) / 2**20
    self.xla_temp_mb = mem.temp_size_in_bytes / 2**20

  def run(self, steps: int) -> None:
    for _ in range(steps):
      old = self.state
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    self.donated = all(leaf.is_deleted() for leaf in jax.tree.leaves(old.params))


class TorchStep:
  """The PyTorch twin: model, SGD-Nesterov optimiser and one batch on the same device kind.

  `mode` "eager" runs `torch_reference.train_step`; any other is a `torch.compile` mode for
  `torch_reference.compiled_train_step`, compiled by `warm_up` (its time in `compile_s`).
  """

  def __init__(self, config, batch: dict[str, np.ndarray], mode: str = "eager"):
    import torch

    from samplecnn_jax import torch_reference

    self.torch, self.ref = torch, torch_reference
    self.device = "cuda" if on_gpu() and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    self.model = torch_reference.create_model(config).to(self.device)
    self.optimizer = torch_reference.create_optimizer(config, self.model)
    self.audio = torch.from_numpy(batch["audio"]).to(self.device)
    self.labels = torch.from_numpy(batch["label"]).to(self.device)
    self.num_params = torch_reference.count_params(self.model)
    self.label_type = config.label_type
    self.mode = mode
    if mode == "eager":
      self.step = functools.partial(
          torch_reference.train_step, self.model, self.optimizer, label_type=self.label_type
      )
    else:
      self.step = torch_reference.compiled_train_step(
          self.model, self.optimizer, self.label_type, mode
      )
    self.compile_s = 0.0

  def run(self, steps: int) -> None:
    torch = self.torch
    for _ in range(steps):
      with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
        loss = self.step(self.audio, self.labels)
    loss.item()  # Waits for the device.

  def warm_up(self) -> None:
    """Eager: one step. Compiled: the compiling steps; compile_s = their time minus steady steps."""
    if self.mode == "eager":
      self.run(1)
      return
    start = time.perf_counter()
    self.run(COMPILE_WARMUP_STEPS)
    warm = time.perf_counter() - start
    steady = common.time_per_call(functools.partial(self.run, 1), 1)
    self.compile_s = max(warm - COMPILE_WARMUP_STEPS * steady, 0.0)


class Matmul:
  """A large jnp.dot in `dtype`: the machine's practical FLOP/s peak for that dtype."""

  def __init__(self, dtype: str = "float32", size: int = MATMUL_SIZE):
    gpu = on_gpu()
    size = 2 * size if gpu else size
    self.a = jnp.ones((size, size), jnp.dtype(dtype))
    self.dot = jax.jit(jnp.dot)
    self.flops = 2 * size**3
    self.calls = 20 if gpu else 1  # A GPU does one in about a millisecond.
    self.run()

  def run(self) -> None:
    self.dot(self.a, self.a).block_until_ready()

  def flops_per_s(self) -> float:
    return self.flops / common.time_per_call(self.run, self.calls)


# --- Memory, in a fresh subprocess per framework -------------------------------------------------


def measure_memory_child(args) -> dict[str, float]:
  """Peak memory of the train step in this (fresh) process; printed as JSON to the parent.

  Baseline: after imports, model/optimiser set-up and the batch. Then one warm-up step (the
  JAX compile; PyTorch's lazily created gradients and momentum), freed heap returned to the
  OS, the peak reset, and `steps` more steps. Reported: peak - baseline, i.e. what the step
  adds on top of the parameters and the batch (activations, gradients, optimiser state,
  temporaries). On GPU: the device allocator's peak instead of the RSS.
  """
  config = build_config(args.child_config, args.child_variant, args.batch, args.set,
                        args.se_ratio, args.dtype)
  batch = fake_batch(config)
  if args.child == "torch":
    import torch

    torch.set_num_threads(os.cpu_count())
    step = TorchStep(config, batch)
  else:
    step = JaxStep(config, batch)
  gpu = on_gpu()
  common.release_free_memory()
  baseline = _device_bytes_in_use(args.child) / 2**20 if gpu else common.rss_mb()
  if args.child == "jax":
    step.compile()
  step.run(1)
  common.release_free_memory()
  if gpu:
    _reset_device_peak(args.child)
  reset_ok = common.reset_peak_rss()
  step.run(args.memory_steps)
  peak = _device_peak_bytes(args.child) / 2**20 if gpu else common.peak_rss_mb()
  result = {"baseline_mb": baseline, "peak_mb": peak, "step_peak_mb": peak - baseline,
            "peak_reset": reset_ok}
  if args.child == "jax":
    result["xla_memory_mb"] = step.xla_memory_mb
  return result


def _device_bytes_in_use(framework: str) -> int:
  if framework == "torch":
    import torch

    return torch.cuda.memory_allocated()
  return jax.devices()[0].memory_stats()["bytes_in_use"]


def _reset_device_peak(framework: str) -> None:
  if framework == "torch":
    import torch

    torch.cuda.reset_peak_memory_stats()
  # JAX's GPU allocator has no reset; its peak since start includes set-up, which is smaller.


def _device_peak_bytes(framework: str) -> int:
  if framework == "torch":
    import torch

    return torch.cuda.max_memory_allocated()
  return jax.devices()[0].memory_stats()["peak_bytes_in_use"]


def measure_memory(framework: str, name: str, variant: str, args) -> dict[str, float] | None:
  command = [
      sys.executable, str(Path(__file__).resolve()), "--child", framework,
      "--child-config", name, "--child-variant", variant, "--batch", str(args.batch),
      "--memory-steps", str(args.memory_steps),
  ]
  if args.se_ratio is not None:
    command += ["--se-ratio", str(args.se_ratio)]
  if args.dtype:
    command += ["--dtype", args.dtype]
  if args.plain_flax:
    command += ["--plain-flax", args.plain_flax]
  for item in args.set:
    command += ["--set", item]
  proc = subprocess.run(command, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    print(f"  memory measurement ({framework}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None
  return json.loads(proc.stdout.strip().splitlines()[-1])


# --- One row -------------------------------------------------------------------------------------


def benchmark_row(name: str, variant: str, args) -> dict[str, object]:
  config = build_config(name, variant, args.batch, args.set, args.se_ratio, args.dtype)
  batch = fake_batch(config)
  row: dict[str, object] = {"config": name, "variant": variant, "dtype": config.model.dtype}
  jax_step = JaxStep(config, batch)
  jax_step.compile()
  jax_step.run(1)  # Warm-up.
  row["donated"] = jax_step.donated
  row["params"] = jax_step.num_params
  row["jax_compile_s"] = jax_step.compile_s
  torch_steps = {}
  for mode in args.torch_modes:
    step = TorchStep(config, batch, mode)
    if step.num_params != jax_step.num_params:
      raise AssertionError(
          f"{name}/{variant}: PyTorch has {step.num_params} parameters, JAX "
          f"{jax_step.num_params}: the two models differ."
      )
    step.warm_up()
    row[f"torch_{mode}_compile_s"] = step.compile_s
    torch_steps[mode] = step
  matmuls = {dtype: Matmul(dtype, args.matmul_size) for dtype in args.matmul}
  # Alternate JAX, each PyTorch mode and the matmuls in each round so that all see the same
  # machine load; ratios and fractions are taken within a round, then the median over rounds.
  jax_times, matmul_rates = [], {dtype: [] for dtype in matmuls}
  torch_times = {mode: [] for mode in torch_steps}
  for _ in range(args.rounds):
    jax_times.append(common.time_per_call(functools.partial(jax_step.run, 1), args.steps))
    for mode, step in torch_steps.items():
      torch_times[mode].append(common.time_per_call(functools.partial(step.run, 1), args.steps))
    for dtype, matmul in matmuls.items():
      matmul_rates[dtype].append(matmul.flops_per_s())
  jax_time = common.median(jax_times)
  row["jax_ex_s"] = args.batch / jax_time
  for mode, times in torch_times.items():
    row[f"torch_{mode}_ex_s"] = args.batch / common.median(times)
    row[f"speedup_{mode}"] = common.median(
        [t / j for t, j in zip(times, jax_times, strict=True)]
    )
  row["jax_gflop_s"] = jax_step.flops / jax_time / 1e9
  row["step_gflop"] = jax_step.flops / 1e9
  row["model_gflop"] = jax_step.model_flops / 1e9
  for dtype, rates in matmul_rates.items():
    row[f"matmul_{dtype}_gflop_s"] = common.median(rates) / 1e9
    row[f"matmul_{dtype}_fraction"] = common.median(
        [jax_step.flops / j / m for j, m in zip(jax_times, rates, strict=True)]
    )
    row[f"model_{dtype}_fraction"] = common.median(
        [jax_step.model_flops / j / m for j, m in zip(jax_times, rates, strict=True)]
    )
  row["xla_memory_mb"] = jax_step.xla_memory_mb
  del jax_step, torch_steps
  if not args.no_memory:
    frameworks = ("jax",) + (("torch",) if "eager" in args.torch_modes else ())
    for framework in frameworks:
      row[f"{framework}_memory"] = measure_memory(framework, name, variant, args)
  return row


def print_table(rows, args) -> None:
  headers = ["config", "variant", "dtype", "JAX ex/s"]
  for mode in args.torch_modes:
    label = "PyTorch" if mode == "eager" else f"compiled ({mode})"
    headers += [f"{label} ex/s", f"speed-up vs {label}"]
  headers += ["JAX GFLOP/s"]
  for dtype in args.matmul:
    headers += [f"{dtype} matmul GFLOP/s", f"fraction of {dtype}", f"conv+dot fraction of {dtype}"]
  headers += ["JAX peak MB", "PyTorch peak MB", "memory ratio", "XLA analysis MB"]
  table = []
  for r in rows:
    jm, tm = r.get("jax_memory"), r.get("torch_memory")
    jpeak = jm["step_peak_mb"] if jm else None
    tpeak = tm["step_peak_mb"] if tm else None
    line = [r["config"], r["variant"], r["dtype"], r["jax_ex_s"]]
    for mode in args.torch_modes:
      line += [r[f"torch_{mode}_ex_s"], r[f"speedup_{mode}"]]
    line += [r["jax_gflop_s"]]
    for dtype in args.matmul:
      line += [r[f"matmul_{dtype}_gflop_s"], r[f"matmul_{dtype}_fraction"],
               r[f"model_{dtype}_fraction"]]
    line += [jpeak, tpeak, jpeak / tpeak if jpeak and tpeak else None, r["xla_memory_mb"]]
    table.append(line)
  print(common.format_table(headers, table))
  compiled = [m for m in args.torch_modes if m != "eager"]
  print("\nCompile time, s (JAX: lower + compile; torch.compile: its first "
        f"{COMPILE_WARMUP_STEPS} steps minus {COMPILE_WARMUP_STEPS} steady steps):\n")
  print(common.format_table(
      ["config", "variant", "JAX"] + compiled,
      [[r["config"], r["variant"], r["jax_compile_s"]]
       + [r[f"torch_{m}_compile_s"] for m in compiled] for r in rows],
  ))
  print(
      "\nex/s: examples per second, median over rounds. speed-up: PyTorch step time / JAX step\n"
      "time, and fraction: JAX FLOP/s / matmul FLOP/s, each taken within a round (median).\n"
      "JAX GFLOP/s: XLA cost-analysis FLOPs of the step (elementwise ops included) / its median\n"
      "time; conv+dot fraction counts only the convolutions' and matmuls' FLOPs. Peak MB: peak RSS\n"
      "(GPU: device allocator peak) during steps minus the level after imports and set-up, in\n"
      "a fresh process per framework (eager PyTorch). XLA analysis MB: argument + output + temp\n"
      "- aliased."
  )


def describe_machine(args) -> str:
  lines = [f"backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, "
           f"{os.cpu_count()} CPUs, jax {jax.__version__}"]
  if args.torch_modes:
    import torch

    lines.append(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}; XLA:CPU "
                 f"intra-op pool: its default, one thread per core ({os.cpu_count()})")
  lines.append(f"PyTorch modes: {', '.join(args.torch_modes) or 'none'}; matmul reference: "
               f"{', '.join(args.matmul)}; model dtype: {args.dtype or 'backend default'}")
  lines.append(f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps each (median), "
               f"overrides {args.set or 'none'}, se_ratio {args.se_ratio or 'config default'}, "
               f"plain Flax layers: {args.plain_flax or 'none'}")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated configs.")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variants.")
  parser.add_argument("--batch", type=int, default=23, help="Batch size (paper: 23).")
  parser.add_argument("--rounds", type=int, default=3, help="Alternating timing rounds.")
  parser.add_argument("--steps", type=int, default=3, help="Steps per round per framework.")
  parser.add_argument("--memory-steps", type=int, default=2, help="Steps in the memory runs.")
  parser.add_argument("--se-ratio", type=float, default=None, help="Override model.se_ratio.")
  parser.add_argument("--set", action="append", default=[],
                      help="Config override field=value, e.g. model.remat=True (repeatable).")
  parser.add_argument("--plain-flax", default="",
                      help="Comma-separated: pool, dropout, batchnorm. Use Flax's own layers instead of "
                      "the model's faster equivalents (to measure their effect).")
  parser.add_argument("--quick", action="store_true",
                      help="speech_commands only, 2 rounds x 1 step: a check that it runs.")
  parser.add_argument("--no-torch", action="store_true", help="JAX only.")
  parser.add_argument("--torch-modes", default="eager,default",
                      help="Comma-separated PyTorch steps to time: eager and/or torch.compile "
                      f"modes ({', '.join(TORCH_MODES[1:])}, ...).")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="Model compute dtype (default: bfloat16 on GPU, float32 on CPU).")
  parser.add_argument("--matmul", default="",
                      help="Comma-separated matmul reference dtypes (default: float32 on CPU, "
                      "bfloat16,float32 on GPU).")
  parser.add_argument("--matmul-size", type=int, default=MATMUL_SIZE,
                      help="Side of the square reference matmul (doubled on GPU).")
  parser.add_argument("--no-memory", action="store_true", help="Skip the memory subprocesses.")
  parser.add_argument("--json", default="", help="Also write the rows to this JSON file.")
  parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
  parser.add_argument("--child-config", help=argparse.SUPPRESS)
  parser.add_argument("--child-variant", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.configs, args.rounds, args.steps = "speech_commands", 2, 1
  args.torch_modes = [] if args.no_torch else [m for m in args.torch_modes.split(",") if m]
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  use_plain_flax_layers([n for n in args.plain_flax.split(",") if n])
  if args.child:
    print(json.dumps(measure_memory_child(args)))
    return
  args.matmul = [d for d in args.matmul.split(",") if d] or (
      ["bfloat16", "float32"] if on_gpu() else ["float32"])
  if args.torch_modes:
    # A fresh inductor cache, so that the compile times are a cold compile's.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_"))
    try:
      import torch
    except ImportError:
      sys.exit("PyTorch is not installed: pip install -e '.[bench]', or pass --no-torch.")
    torch.set_num_threads(os.cpu_count())
  if on_gpu():
    print(f"GPU backend: {args.dtype or 'bfloat16'} compute.")
  print(describe_machine(args))
  rows = []
  for name in args.configs.split(","):
    for variant in args.variants.split(","):
      row = benchmark_row(name, variant, args)
      print(json.dumps(row), flush=True)
      rows.append(row)
  print()
  print_table(rows, args)
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
