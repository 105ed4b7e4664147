"""Filter visualisation by activation maximisation, as in `paper.md` section 4.

For every filter of a convolutional layer, gradient ascent finds the input waveform that
maximises the filter's mean activation, starting from random noise; the magnitude spectrum
of each estimate, log-compressed and sorted by peak frequency, is drawn as one image per
layer. The method is in importable functions (`visualize_filters`, `plot_filters`,
`save_filters`, `run`) for Python and Colab; `python -m samplecnn_jax.visualize` is the
command line on top (see `docs/visualize.md`).

What is maximised (`target`, default `pre_relu`): the layer's output with its final ReLU
removed, i.e. the batch-normalised (eval-mode, running statistics) pre-activation, max-pooled
like the layer output and, for residual blocks, including the shortcut. Where a filter is
active this has the same gradient as the layer output; where it is not (every position
negative, common at length-1 outputs and in untrained models) the output's gradient is zero
and ascent would never move, while the pre-activation still says which way to go.
`target='output'` maximises the layer output itself (after ReLU, pooling and SE).

Input length: layer k needs at least 3^k samples for a temporal length >= 1, so it sees
`max(input_size, 3**k)` samples (default input_size 729 = 3^6: layers 1-6 as in the paper,
deeper layers the shortest input that reaches them). The temporal dimension left at the
target layer is averaged.

What this module is not for: training, evaluation or checkpoint writing; it reads
checkpoints only through `samplecnn_jax.checkpointing.load_variables`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from samplecnn_jax import models, store

TARGETS = ("pre_relu", "output")
NORMALISATIONS = ("gradient_rms", "none")
AUTO_CHUNK_SAMPLES = 2**20  # chunk_size=0: filters per batch = this // input length.


def default_config() -> ml_collections.ConfigDict:
  """The `visualize` settings with their defaults; a run config may carry its own copy."""
  v = ml_collections.ConfigDict()
  v.steps = 20  # Gradient-ascent steps per filter.
  v.step_size = 0.01  # Change per step, as RMS over samples when normalise='gradient_rms'.
  v.input_size = 729  # Samples of the starting noise (3^6); layer k uses max(this, 3^k).
  v.init_std = 0.1  # Standard deviation of the Gaussian starting noise.
  v.normalise = "gradient_rms"  # gradient_rms (divide by its RMS, the Keras recipe) | none.
  v.target = "pre_relu"  # pre_relu (layer output before its final ReLU) | output.
  v.seed = 0  # Seed of the starting noise (the same noise for every filter of a layer).
  v.layers = ()  # Layers to visualise, 1 = front conv, i + 1 = block i; () = all.
  v.chunk_size = 0  # Filters per vmapped batch; 0 = as many as fit 2^20 input samples.
  v.floor_db = 60.0  # Log spectra are dB re each filter's peak, floored at -floor_db.
  return v


def visualize_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The defaults, updated with `config.visualize` where the run config has one."""
  settings = default_config()
  if "visualize" in config:
    settings.update(config.visualize)
  return settings


@dataclasses.dataclass(frozen=True)
class LayerFilters:
  """Activation-maximisation estimates of one layer's filters and their spectra."""

  layer: int  # 1 = front conv, i + 1 = block i.
  name: str  # front_conv | block<i>.
  estimates: np.ndarray  # (filters, samples): the input that maximises each filter.
  activation_trace: np.ndarray  # (steps + 1, filters): target before each step, and after.
  frequencies: np.ndarray  # (bins,): Hz of the rfft bins.
  magnitude: np.ndarray  # (filters, bins): |rfft(estimate)|.
  log_magnitude: np.ndarray  # (filters, bins): dB re each filter's peak, >= -floor_db.
  peak_hz: np.ndarray  # (filters,): frequency of each filter's largest magnitude.
  order: np.ndarray  # (filters,): filter indices sorted by peak frequency (the x axis).
  seconds: float  # Wall time of the ascent, compile included.
  compile_seconds: float  # Of which compiling the jitted ascent (once per layer).


# --- What is maximised --------------------------------------------------------------------


def layer_input_size(layer: int, input_size: int = 729) -> int:
  """Samples layer `layer` sees: the configured size, or 3^layer if that is too short."""
  return max(input_size, 3**layer)


def layer_activation(
    model: models.SampleLevelCNN,
    variables: Any,
    waveforms: jax.Array,
    layer: int,
    target: str = "pre_relu",
) -> jax.Array:
  """The maximised quantity of every filter of `layer`: `(batch, length, filters)`.

  `target='output'` is the layer output (`model.apply(..., num_layers=layer)[-1]`);
  `'pre_relu'` is the same before the layer's final ReLU, as the layer itself sows it
  (`models.pre_relu`: front BN for layer 1; for basic/SE blocks the block's BN, pooled,
  without the SE gate; for Res/ReSE blocks main path plus shortcut, pooled), so a change to
  a block cannot silently change what is visualised. BN uses its running statistics.
  """
  outputs, state = model.apply(
      variables, waveforms, train=False, num_layers=layer, mutable=["intermediates"]
  )
  if target == "output":
    return outputs[-1]
  if target != "pre_relu":
    raise ValueError(f"Unknown target {target!r}; choose one of {', '.join(TARGETS)}.")
  return models.pre_relu(state["intermediates"], layer)


# --- Gradient ascent ----------------------------------------------------------------------


def _ascent_fns(model, layer: int, settings) -> tuple[Callable, Callable]:
  """Jitted `step(variables, x (F, L), filters (F,)) -> (x + update, target before)` and
  `target(variables, x, filters) -> (F,)`, vectorised over filters with `jax.vmap`.

  The steps are driven by a Python loop rather than `lax.scan`: XLA:CPU runs while-loop
  bodies much slower (10-20x for these convolutions, measured with jax 0.12), and one
  compiled step per layer still compiles only once.
  """

  def objective(variables, x, filter_index):
    activation = layer_activation(model, variables, x[None], layer, settings.target)
    return jnp.mean(activation[0, :, filter_index])

  value_and_grad = jax.vmap(jax.value_and_grad(objective, argnums=1), in_axes=(None, 0, 0))

  def step(variables, x, filters):
    value, grad = value_and_grad(variables, x, filters)
    if settings.normalise == "gradient_rms":
      grad = grad / (jnp.sqrt(jnp.mean(grad**2, axis=1, keepdims=True)) + 1e-12)
    return x + settings.step_size * grad, value

  target = jax.vmap(objective, in_axes=(None, 0, 0))
  return jax.jit(step, donate_argnums=1), jax.jit(target)


def _check_settings(settings) -> None:
  if settings.target not in TARGETS:
    raise ValueError(f"Unknown target {settings.target!r}; choose one of {', '.join(TARGETS)}.")
  if settings.normalise not in NORMALISATIONS:
    raise ValueError(
        f"Unknown normalise {settings.normalise!r}; choose one of {', '.join(NORMALISATIONS)}."
    )
  if settings.steps < 0 or settings.input_size < 3 or settings.chunk_size < 0:
    raise ValueError(
        f"Need steps >= 0, input_size >= 3 and chunk_size >= 0; got steps={settings.steps}, "
        f"input_size={settings.input_size}, chunk_size={settings.chunk_size}."
    )


def _check_layers(layers: Sequence[int], num_layers: int) -> None:
  bad = [k for k in layers if not 1 <= k <= num_layers]
  if bad:
    raise ValueError(
        f"layers {bad} do not exist: this model has layers 1..{num_layers} (1 = front conv, "
        f"i + 1 = block i)."
    )


def estimate_layer(
    model: models.SampleLevelCNN,
    variables: Any,
    layer: int,
    settings: ml_collections.ConfigDict,
    sample_rate: float,
) -> LayerFilters:
  """Runs the ascent for every filter of `layer` (vmapped in chunks, jitted once)."""
  _check_settings(settings)
  _check_layers([layer], model.num_blocks + 1)
  model = model.clone(dtype=jnp.float32, remat=False)  # Same parameters, float32 ascent.
  length = layer_input_size(layer, settings.input_size)
  models.check_input_size(length, layer - 1, model.front_padding)
  num_filters = ([model.base_width] + models.block_widths(model.num_blocks, model.base_width))[
      layer - 1
  ]
  chunk = settings.chunk_size or max(1, AUTO_CHUNK_SAMPLES // length)
  chunk = min(chunk, num_filters)
  key = jax.random.fold_in(jax.random.key(settings.seed), layer)
  noise = settings.init_std * jax.random.normal(key, (length,), jnp.float32)
  variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
  step, target = _ascent_fns(model, layer, settings)

  start = time.perf_counter()
  shapes = (variables, jax.ShapeDtypeStruct((chunk, length), jnp.float32),
            jax.ShapeDtypeStruct((chunk,), jnp.int32))
  step, target = step.lower(*shapes).compile(), target.lower(*shapes).compile()
  compile_seconds = time.perf_counter() - start
  estimates, traces = [], []
  for first in range(0, num_filters, chunk):
    filters = jnp.asarray(np.arange(first, first + chunk, dtype=np.int32) % num_filters)
    x = jnp.broadcast_to(noise, (chunk, length)).copy()  # Last chunk padded: one shape.
    trace = []
    for _ in range(settings.steps):
      x, value = step(variables, x, filters)
      trace.append(value)
    trace.append(target(variables, x, filters))
    keep = min(chunk, num_filters - first)
    estimates.append(np.asarray(x)[:keep])
    traces.append(np.stack([np.asarray(t) for t in trace])[:, :keep])
  seconds = time.perf_counter() - start
  estimates = np.concatenate(estimates)
  frequencies, magnitude, log_magnitude, peak_hz, order = filter_spectra(
      estimates, sample_rate, settings.floor_db
  )
  return LayerFilters(
      layer=layer,
      name=models.layer_names(model)[layer - 1],
      estimates=estimates,
      activation_trace=np.concatenate(traces, axis=1),
      frequencies=frequencies,
      magnitude=magnitude,
      log_magnitude=log_magnitude,
      peak_hz=peak_hz,
      order=order,
      seconds=seconds,
      compile_seconds=compile_seconds,
  )


def filter_spectra(
    estimates: np.ndarray, sample_rate: float, floor_db: float = 60.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(frequencies, magnitude, log magnitude, peak Hz, order) of `(filters, samples)` waveforms.

  The magnitude is |rfft| over the whole estimate (bin width sample_rate / samples); the log
  magnitude is 20 log10(magnitude / the filter's maximum), floored at -floor_db; `order`
  sorts filters by the frequency of their maximum (stable, so ties keep filter order).
  """
  estimates = np.asarray(estimates, np.float64)
  frequencies = np.fft.rfftfreq(estimates.shape[1], d=1.0 / sample_rate)
  magnitude = np.abs(np.fft.rfft(estimates, axis=1))
  peak_bin = magnitude.argmax(axis=1)
  peak = magnitude.max(axis=1, keepdims=True)
  relative = np.divide(magnitude, peak, out=np.zeros_like(magnitude), where=peak > 0)
  floor = 10.0 ** (-floor_db / 20.0)
  log_magnitude = 20.0 * np.log10(np.maximum(relative, floor))
  peak_hz = frequencies[peak_bin]
  return frequencies, magnitude, log_magnitude, peak_hz, np.argsort(peak_hz, kind="stable")


def visualize_filters(
    model: models.SampleLevelCNN,
    variables: Any,
    settings: ml_collections.ConfigDict | None = None,
    sample_rate: float = 16000.0,
    progress: Callable[[LayerFilters], None] | None = None,
) -> list[LayerFilters]:
  """Estimates and spectra of the filters of `settings.layers` (default: every layer).

  Works on any model variant, trained or freshly initialised. `progress` is called with
  each finished layer (e.g. to log timings).
  """
  settings = settings or default_config()
  _check_settings(settings)
  layers = list(settings.layers) or list(range(1, model.num_blocks + 2))
  _check_layers(layers, model.num_blocks + 1)
  results = []
  for layer in layers:
    results.append(estimate_layer(model, variables, layer, settings, sample_rate))
    if progress is not None:
      progress(results[-1])
  return results


# --- Figures and files --------------------------------------------------------------------


def _draw_layer(ax, result: LayerFilters, sample_rate: float, floor_db: float):
  num_filters = result.estimates.shape[0]
  return ax.imshow(
      result.log_magnitude[result.order].T,
      origin="lower",
      aspect="auto",
      extent=(0, num_filters, 0, sample_rate / 2000.0),
      cmap="magma",
      vmin=-floor_db,
      vmax=0.0,
      interpolation="nearest",
  )


def plot_filters(
    results: Sequence[LayerFilters], sample_rate: float = 16000.0, floor_db: float = 60.0
) -> Figure:
  """All layers side by side: filters sorted by peak frequency (x) against kHz (y)."""
  figure = Figure(figsize=(1.8 * len(results) + 1.2, 3.6), layout="constrained")
  axes = figure.subplots(1, len(results), squeeze=False)[0]
  image = None
  for ax, result in zip(axes, results, strict=True):
    image = _draw_layer(ax, result, sample_rate, floor_db)
    ax.set_title(f"layer {result.layer}\n{result.name}", fontsize=9)
    ax.set_xlabel("filter", fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0].set_ylabel("frequency (kHz)")
  figure.colorbar(image, ax=list(axes), label="dB re filter peak")
  return figure


def plot_layer(result: LayerFilters, sample_rate: float = 16000.0, floor_db: float = 60.0) -> Figure:
  """One layer's spectra as an image (the per-layer PNG)."""
  figure = Figure(figsize=(5, 3.6), layout="constrained")
  ax = figure.subplots()
  image = _draw_layer(ax, result, sample_rate, floor_db)
  ax.set_title(f"layer {result.layer} ({result.name}): filter estimates")
  ax.set_xlabel("filter, sorted by peak frequency")
  ax.set_ylabel("frequency (kHz)")
  figure.colorbar(image, ax=ax, label="dB re filter peak")
  return figure


NPZ_FIELDS = (
    "estimates", "activation_trace", "frequencies", "magnitude", "log_magnitude", "peak_hz",
    "order",
)


def save_filters(
    results: Sequence[LayerFilters],
    out_dir: str | Path,
    sample_rate: float,
    settings: ml_collections.ConfigDict,
    figure: Figure | None = None,
) -> dict[str, Path]:
  """Writes the files `docs/visualize.md` lists; returns them by name.

  `filters.npz`: `layers`, `sample_rate` and, per layer k, `layer<k>_<field>` for the
  `LayerFilters` array fields. `filters.json`: settings and a line per layer.
  `layer<kk>_<name>.png`: one image per layer. `filters.png`: all layers side by side.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  arrays = {"layers": np.array([r.layer for r in results]), "sample_rate": np.array(sample_rate)}
  for r in results:
    arrays.update({f"layer{r.layer}_{field}": getattr(r, field) for field in NPZ_FIELDS})
  paths = {"npz": out / "filters.npz", "json": out / "filters.json", "figure": out / "filters.png"}
  np.savez_compressed(paths["npz"], **arrays)
  summary = {
      "settings": settings.to_dict(),
      "sample_rate": sample_rate,
      "layers": [
          {
              "layer": r.layer, "name": r.name, "filters": int(r.estimates.shape[0]),
              "input_size": int(r.estimates.shape[1]), "seconds": round(r.seconds, 3),
              "compile_seconds": round(r.compile_seconds, 3),
              "mean_activation_start": float(r.activation_trace[0].mean()),
              "mean_activation_end": float(r.activation_trace[-1].mean()),
          }
          for r in results
      ],
  }
  store.write_json(paths["json"], summary)
  for r in results:
    path = out / f"layer{r.layer:02d}_{r.name}.png"
    plot_layer(r, sample_rate, settings.floor_db).savefig(path, dpi=120)
    paths[f"layer{r.layer}"] = path
  (figure or plot_filters(results, sample_rate, settings.floor_db)).savefig(paths["figure"], dpi=120)
  return paths


# --- Entry points -------------------------------------------------------------------------


def run(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    *,
    untrained: bool = False,
    which: str = "best",
    settings: ml_collections.ConfigDict | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[LayerFilters], None] | None = None,
) -> tuple[list[LayerFilters], Figure, dict[str, Path]]:
  """Visualises the model of `config`: the `which` checkpoint of `workdir`, or untrained.

  Returns the per-layer results, the all-layers figure and the written files (none when
  `out_dir` is None; the CLI defaults it to `<workdir>/filters`).
  """
  model = models.create_model(config.model, config.num_classes)
  if untrained:
    variables = model.init(
        jax.random.key(config.seed), jnp.zeros((1, config.input_size), jnp.float32), train=False
    )
  else:
    if not workdir:
      raise ValueError("Give the workdir whose checkpoint to visualise, or untrained=True.")
    from samplecnn_jax.checkpointing import load_variables

    variables = load_variables(workdir, config, which)
  settings = settings or visualize_config(config)
  results = visualize_filters(model, variables, settings, config.sample_rate, progress)
  figure = plot_filters(results, config.sample_rate, settings.floor_db)
  paths = {}
  if out_dir is not None:
    paths = save_filters(results, out_dir, config.sample_rate, settings, figure)
  return results, figure, paths


def _define_flags(flag_values):
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Run config file.", flag_values=flag_values)
  define = {"string": flags.DEFINE_string, "bool": flags.DEFINE_bool,
            "int": flags.DEFINE_integer, "float": flags.DEFINE_float, "list": flags.DEFINE_list}
  for kind, name, default, help_text in (
      ("string", "workdir", None, "Training workdir whose checkpoint to visualise."),
      ("string", "which", "best", "Checkpoint: best | latest."),
      ("bool", "untrained", False, "Visualise a freshly initialised model (no checkpoint)."),
      ("string", "out_dir", None, "Output folder; default <workdir>/filters."),
      ("int", "steps", None, "Gradient-ascent steps (default 20)."),
      ("float", "step_size", None, "Step size (default 0.01)."),
      ("int", "input_size", None, "Starting-noise samples (default 729)."),
      ("float", "init_std", None, "Starting-noise std (default 0.1)."),
      ("string", "normalise", None, "gradient_rms | none (default gradient_rms)."),
      ("string", "target", None, "pre_relu | output (default pre_relu)."),
      ("int", "seed", None, "Noise seed (default 0)."),
      ("list", "layers", None, "Comma-separated layer numbers, 1 = front conv (default all)."),
      ("int", "chunk_size", None, "Filters per vmapped batch, 0 = auto."),
      ("float", "floor_db", None, "Log-spectrum floor in dB below each peak (default 60)."),
  ):
    define[kind](name, default, help_text, flag_values=flag_values)
  return flag_values


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
  """Command line: `python -m samplecnn_jax.visualize --config=FILE --workdir=DIR [...]`.

  Flags are parsed into a private FlagValues, so this runs in-process (tests, notebooks)
  next to other modules' absl flags. Returns the written files.
  """
  from absl import flags

  argv = list(sys.argv if argv is None else argv)
  flag_values = _define_flags(flags.FlagValues())
  if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
    print(flag_values.get_help())
    return {}
  try:
    rest = flag_values(argv)
  except flags.Error as error:
    raise SystemExit(f"{error}\nRun with --help for the flags.") from None
  if len(rest) > 1:
    raise SystemExit(f"Unexpected arguments: {rest[1:]}")
  f = flag_values
  if f.config is None:
    raise SystemExit("--config is required, e.g. --config=configs/mtat.py:samplecnn.")
  if not f.untrained and not f.workdir:
    raise SystemExit("Give --workdir=DIR (its best checkpoint is visualised) or --untrained.")
  if f.untrained and not (f.out_dir or f.workdir):
    raise SystemExit("With --untrained, give --out_dir (or --workdir) for the output files.")
  settings = visualize_config(f.config)
  for name in default_config().keys():  # Each setting has a flag of its name.
    value = getattr(f, name)
    if value is not None:
      settings[name] = tuple(int(k) for k in value) if name == "layers" else value
  out_dir = Path(f.out_dir or Path(f.workdir) / "filters")

  def report(result: LayerFilters):
    trace = result.activation_trace
    print(
        f"layer {result.layer:2d} {result.name:10s} {trace.shape[1]:4d} filters "
        f"x {result.estimates.shape[1]:6d} samples: {result.seconds:7.2f} s, mean activation "
        f"{trace[0].mean():+.3g} -> {trace[-1].mean():+.3g}",
        flush=True,
    )

  try:
    _, _, paths = run(
        f.config, f.workdir, untrained=f.untrained, which=f.which, settings=settings,
        out_dir=out_dir, progress=report,
    )
  except FileNotFoundError as error:
    raise SystemExit(f"{error}\n(--untrained visualises a freshly initialised model.)") from None
  print(f"Wrote {len(paths)} files to {out_dir}: filters.png, filters.npz, filters.json, "
        f"layer<k>_<name>.png")
  return paths


if __name__ == "__main__":
  main()
