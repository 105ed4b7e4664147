"""Filter visualisation by activation maximisation, as in `paper.md` section 4.

For every filter of a convolutional layer, gradient ascent finds the input waveform that
maximises the filter's mean activation, starting from its best probe tone; the magnitude
spectrum of each estimate, log-compressed and sorted by peak frequency, is drawn as one image
per layer. The method is in importable functions (`visualize_filters`, `plot_filters`,
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
import optax
from matplotlib.figure import Figure

from samplecnn_jax import cli, models, store

TARGETS = ("pre_relu", "output")
OPTIMIZERS = ("adam", "normalised_gradient")
INITS = ("tone", "noise")
TONE_PHASES = 4  # Phases (0, 90, 180, 270 degrees) of every probe tone of init='tone'.
AUTO_CHUNK_SAMPLES = 2**20  # chunk_size=0: filters per batch = this // input length.


def default_config() -> ml_collections.ConfigDict:
  """The `visualize` settings with their defaults; a run config may carry its own copy."""
  v = ml_collections.ConfigDict()
  v.steps = 100  # Most ascent steps per filter; the stop rule usually ends sooner.
  v.step_size = 0.2  # First step, as update RMS / input_rms; cosine-decays to 1/10 of it.
  v.optimizer = "normalised_gradient"  # normalised_gradient (g / RMS(g)) | adam.
  v.input_rms = 1e-3  # The estimate's RMS, held fixed (norm-constrained ascent).
  v.init = "tone"  # tone: start at the filter's best probe tone, plus noise | noise: noise only.
  v.tones = 96  # Log-spaced probe frequencies of init=tone (x 4 phases), lowest bin to Nyquist.
  v.init_rms = 0.1  # Start's RMS (tone or noise), as a fraction of input_rms (steps grow it).
  v.tone_noise = 0.1  # init=tone: the seed's noise added to the tone, as a fraction of its RMS.
  v.jitter = 0  # Random circular shift of the input by up to this many samples per step.
  v.tolerance = 1e-3  # Stop rule: relative change of the target over `window` steps below this.
  v.window = 10  # Steps the stop rule looks back.
  v.input_size = 729  # Samples of each estimate (3^6); layer k uses max(this, 3^k).
  v.target = "pre_relu"  # pre_relu (layer output before its final ReLU) | output.
  v.seed = 0  # Seed of the starting noise (its own noise for every filter).
  v.restarts = 1  # Starts per filter (own noise each); the one with the highest target is kept.
  v.stability_seeds = 1  # Seeds run (seed, seed + 1, ...); 2+ reports seed-to-seed stability.
  v.layers = ()  # Layers to visualise, 1 = front conv, i + 1 = block i; () = all.
  v.chunk_size = 0  # Filters per vmapped batch; 0 = as many as fit 2^20 input samples.
  v.floor_db = 60.0  # Log spectra are dB re each filter's peak, floored at -floor_db.
  return v


def visualize_config(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The defaults, updated with `config.visualize` where the run config has one."""
  settings = default_config()
  if config is not None and "visualize" in config:
    settings.update(config.visualize)
  return settings


@dataclasses.dataclass(frozen=True)
class LayerFilters:
  """Activation-maximisation estimates of one layer's filters and their spectra."""

  layer: int  # 1 = front conv, i + 1 = block i.
  name: str  # front_conv | block<i>.
  estimates: np.ndarray  # (filters, samples): the input that maximises each filter.
  activation_trace: np.ndarray  # (steps run + 1, filters): target before each step, and after.
  converged_step: np.ndarray  # (filters,): step at which the stop rule held; -1 = not converged.
  frequencies: np.ndarray  # (bins,): Hz of the rfft bins.
  magnitude: np.ndarray  # (filters, bins): |rfft(estimate)|.
  log_magnitude: np.ndarray  # (filters, bins): smoothed log power, dB re its peak, >= -floor_db.
  peak_hz: np.ndarray  # (filters,): frequency where log_magnitude peaks (DC excluded).
  order: np.ndarray  # (filters,): filter indices sorted by peak frequency (the x axis).
  flatness: np.ndarray  # (filters,): spectral flatness (white noise 0.56, a sine ~0).
  seconds: float  # Wall time of the ascent, compile included.
  compile_seconds: float  # Of which compiling the jitted ascent (once per layer).
  # With stability_seeds = n > 1: the estimates of seeds seed + 1 .. seed + n - 1, and per
  # filter the log-spectrum correlation and peak agreement with them (means over those seeds).
  seed_estimates: np.ndarray | None = None  # (n - 1, filters, samples).
  seed_r: np.ndarray | None = None  # (filters,).
  seed_peaks_agree: np.ndarray | None = None  # (filters,): share of seeds within 1/6 octave.


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


# --- Norm-constrained ascent ---------------------------------------------------------------


def _ascent_fns(model, layer: int, settings) -> tuple[Callable, Callable]:
  """Jitted `step(variables, x, adam_state, filters, lr, active, key)` and `target(...)`.

  x is `(F, L)`, one estimate per filter, vectorised with `jax.vmap`. A step takes the
  gradient of each filter's target (at a randomly shifted copy of x if `jitter`), removes
  its radial part (the constraint RMS(x) = input_rms leaves only the tangent direction),
  turns it into an update with Adam or by dividing by its RMS, moves the filters still
  `active` by `lr * input_rms` (update RMS) and projects back onto the sphere. The steps
  are driven by a Python loop: XLA:CPU runs while-loop bodies of these convolutions 10-20x
  slower (jax 0.12), and the stop rule needs the values on the host anyway.
  """

  def objective(variables, x, filter_index):
    activation = layer_activation(model, variables, x[None], layer, settings.target)
    return jnp.mean(activation[0, :, filter_index])

  value_and_grad = jax.vmap(jax.value_and_grad(objective, argnums=1), in_axes=(None, 0, 0))
  adam = optax.scale_by_adam()
  rms = settings.input_rms

  def step(variables, x, adam_state, filters, lr, active, key):
    shifts = jnp.zeros(x.shape[0], jnp.int32)
    if settings.jitter:
      shifts = jax.random.randint(key, (x.shape[0],), -settings.jitter, settings.jitter + 1)
    rolled = jax.vmap(jnp.roll)(x, shifts)
    value, grad = value_and_grad(variables, rolled, filters)
    grad = jax.vmap(jnp.roll)(grad, -shifts)
    if settings.optimizer == "adam":
      update, adam_state = adam.update(grad, adam_state)
    else:
      update = grad / (jnp.sqrt(jnp.mean(grad**2, axis=1, keepdims=True)) + 1e-30)
    x = x + (lr * rms) * active[:, None] * update
    x = x * (rms / jnp.sqrt(jnp.mean(x**2, axis=1, keepdims=True)))
    return x, adam_state, value

  target = jax.vmap(objective, in_axes=(None, 0, 0))
  return jax.jit(step, donate_argnums=(1, 2)), jax.jit(target), adam


def step_sizes(settings) -> np.ndarray:
  """The step schedule: cosine decay from `step_size` to a tenth of it over `steps`."""
  t = np.arange(max(settings.steps, 1)) / max(settings.steps - 1, 1)
  return settings.step_size * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)))


def starting_noise(seed: int, layer: int, num_filters: int, length: int, rms: float) -> jax.Array:
  """Gaussian noise scaled to RMS `rms`, its own for every filter: `(num_filters, length)`.

  Filter f of layer k starts from key (seed, k, f): no two filters share their noise, and
  the noise of a filter does not depend on the chunking.
  """
  base = jax.random.fold_in(jax.random.key(seed), layer)
  keys = jax.vmap(lambda f: jax.random.fold_in(base, f))(jnp.arange(num_filters))
  noise = jax.vmap(lambda k: jax.random.normal(k, (length,), jnp.float32))(keys)
  return noise * (rms / jnp.sqrt(jnp.mean(noise**2, axis=1, keepdims=True)))


def tone_bank(num_tones: int, length: int, sample_rate: float, rms: float) -> np.ndarray:
  """Probe tones of RMS `rms`: `(num_tones * TONE_PHASES, length)`, frequency-major.

  Frequencies are log-spaced from the lowest rfft bin of `length` samples to just below
  Nyquist (where a sine vanishes), each at TONE_PHASES phases: for the length-1 outputs of
  deep layers the phase decides the max-pool frames, so it has to be probed too. Each tone
  has a Hann window: an untapered tone responds equally at every position, the max pools
  break the tie at the first one, at the zero-padded edge, and the ascent then climbs to a
  truncated copy of the filter there (seen on the ground-truth network).
  """
  low, high = sample_rate / length, 0.49 * sample_rate
  hz = np.geomspace(low, high, num_tones)
  t = np.arange(length) / sample_rate
  phases = 2 * np.pi * np.arange(TONE_PHASES) / TONE_PHASES
  tones = np.sin(2 * np.pi * hz[:, None, None] * t + phases[None, :, None]).reshape(-1, length)
  tones = tones * np.hanning(length)  # Tapered: the max pools then pick a central frame.
  return (tones * (rms / np.sqrt(np.mean(tones**2, axis=1, keepdims=True)))).astype(np.float32)


def best_tones(
    model: models.SampleLevelCNN, variables: Any, layer: int, settings, length: int,
    sample_rate: float,
) -> np.ndarray:
  """Per filter of `layer`, the probe tone (of `tone_bank`) with the highest target: `(F, L)`.

  One forward pass of the whole bank serves every filter (no gradients), so this costs
  about one ascent step. Starting the ascent there, rather than at noise, makes the start
  a property of the filter: the ascent then climbs to the maximum nearest the filter's
  preferred tone instead of one of the many seed-dependent local maxima of deep layers.
  """
  bank = tone_bank(settings.tones, length, sample_rate, settings.input_rms)
  score = jax.jit(lambda v, x: jnp.mean(layer_activation(model, v, x, layer, settings.target),
                                        axis=1))
  batch = min(len(bank), max(1, AUTO_CHUNK_SAMPLES // length))  # No rows of zeros to score.
  scores = []
  for first in range(0, len(bank), batch):
    probes = bank[first : first + batch]
    padded = np.concatenate([probes, np.zeros((batch - len(probes), length), np.float32)])
    scores.append(np.asarray(score(variables, padded))[: len(probes)])
  return bank[np.concatenate(scores).argmax(axis=0)]


def _check_settings(settings) -> None:
  if settings.init not in INITS:
    raise ValueError(f"Unknown init {settings.init!r}; choose one of {', '.join(INITS)}.")
  if settings.target not in TARGETS:
    raise ValueError(f"Unknown target {settings.target!r}; choose one of {', '.join(TARGETS)}.")
  if settings.optimizer not in OPTIMIZERS:
    raise ValueError(
        f"Unknown optimizer {settings.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}."
    )
  if (settings.steps < 0 or settings.input_size < 3 or settings.chunk_size < 0
      or settings.jitter < 0 or settings.window < 1 or not settings.input_rms > 0
      or not settings.init_rms > 0 or settings.restarts < 1
      or settings.stability_seeds < 1 or settings.tones < 1 or settings.tone_noise < 0):
    raise ValueError(
        "Need steps >= 0, input_size >= 3, chunk_size >= 0, jitter >= 0, window >= 1, "
        f"input_rms > 0, tones >= 1, tone_noise >= 0 and stability_seeds >= 1; got steps={settings.steps}, "
        f"input_size={settings.input_size}, chunk_size={settings.chunk_size}, "
        f"jitter={settings.jitter}, window={settings.window}, input_rms={settings.input_rms}, "
        f"tones={settings.tones}, tone_noise={settings.tone_noise}, stability_seeds={settings.stability_seeds}."
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
    seed: int | None = None,
    compiled: dict | None = None,
) -> LayerFilters:
  """Runs the ascent for every filter of `layer` (vmapped in chunks, jitted once).

  Stop rule: filter f has converged at step t >= window when its target changed by at most
  `tolerance` times its total gain over the last `window` steps; it is then frozen
  (`converged_step` records t, -1 if it never met the rule) while the others go on, so its
  estimate does not depend on its chunk-mates, and a chunk ends when all its filters have
  converged or after `steps` steps. `seed` overrides `settings.seed`; `compiled`, a dict
  kept between calls for the same layer and settings, reuses the compiled steps and the
  tone sweep.
  """
  _check_settings(settings)
  _check_layers([layer], model.num_blocks + 1)
  seed = settings.seed if seed is None else seed
  model = model.clone(dtype=jnp.float32, remat=False)  # Same parameters, float32 ascent.
  length = layer_input_size(layer, settings.input_size)
  models.check_input_size(length, layer - 1, model.front_padding)
  num_filters = ([model.base_width] + models.block_widths(model.num_blocks, model.base_width))[
      layer - 1
  ]
  chunk = settings.chunk_size or max(1, AUTO_CHUNK_SAMPLES // length)
  starts = num_filters * settings.restarts  # Start s ascends filter s % num_filters.
  chunk = min(chunk, starts)
  num_chunks = -(-starts // chunk)
  noise_rms = settings.init_rms * settings.input_rms
  starts_x = starting_noise(seed, layer, num_chunks * chunk, length, noise_rms)
  variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
  lrs = step_sizes(settings)

  start = time.perf_counter()
  compiled = {} if compiled is None else compiled
  if "step" not in compiled:
    step, target, adam = _ascent_fns(model, layer, settings)
    x_shape = jax.ShapeDtypeStruct((chunk, length), jnp.float32)
    f_shape = jax.ShapeDtypeStruct((chunk,), jnp.int32)
    state_shape = jax.eval_shape(adam.init, x_shape)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    mask = jax.ShapeDtypeStruct((chunk,), jnp.float32)
    compiled.update(
        step=step.lower(variables, x_shape, state_shape, f_shape, scalar, mask,
                        jax.random.key(0)).compile(),
        target=target.lower(variables, x_shape, f_shape).compile(),
        adam=adam,
    )
  step, target, adam = compiled["step"], compiled["target"], compiled["adam"]
  compile_seconds = time.perf_counter() - start
  if settings.init == "tone":  # Start s: its filter's best tone, plus its own (smaller) noise.
    if "tones" not in compiled:  # The sweep does not depend on the seed: once per layer.
      compiled["tones"] = best_tones(model, variables, layer, settings, length, sample_rate)
    tones = compiled["tones"] * (noise_rms / settings.input_rms)
    starts_x = tones[np.arange(num_chunks * chunk) % num_filters] + settings.tone_noise * starts_x
  estimates, traces, stops = [], [], []
  for first in range(0, starts, chunk):
    filters = jnp.asarray(np.arange(first, first + chunk, dtype=np.int32) % num_filters)
    x = starts_x[first : first + chunk]  # Last chunk padded with extra starts: one shape.
    adam_state = adam.init(x)
    keep = min(chunk, starts - first)
    stop = np.full(chunk, -1)
    trace = []
    key = jax.random.fold_in(jax.random.key(seed), 1000 + layer)
    for t in range(settings.steps):
      active = jnp.asarray(stop < 0, jnp.float32)
      x, adam_state, value = step(variables, x, adam_state, filters, np.float32(lrs[t]), active,
                                  jax.random.fold_in(key, first * settings.steps + t))
      trace.append(np.asarray(value))
      if t >= settings.window:
        now, before = trace[-1], trace[-1 - settings.window]
        gain = np.abs(now - trace[0])
        met = np.abs(now - before) <= settings.tolerance * np.maximum(gain, 1e-12)
        stop = np.where((stop < 0) & met, t, stop)
        if np.all(stop[:keep] >= 0):
          break
    trace.append(np.asarray(target(variables, x, filters)))
    trace = np.stack(trace)  # Frozen filters keep their value: x no longer moves.
    estimates.append(np.asarray(x)[:keep])
    traces.append(trace[:, :keep])
    stops.append(stop[:keep])
  seconds = time.perf_counter() - start
  longest = max(len(t) for t in traces)
  trace = np.concatenate(
      [np.concatenate([t, np.repeat(t[-1:], longest - len(t), axis=0)]) for t in traces], axis=1
  ).reshape(longest, settings.restarts, num_filters)
  best = trace[-1].argmax(axis=0)  # Per filter, the start that reached the highest target.
  columns = np.arange(num_filters)
  estimates = np.concatenate(estimates).reshape(settings.restarts, num_filters, length)
  estimates = estimates[best, columns]
  stops = np.concatenate(stops).reshape(settings.restarts, num_filters)[best, columns]
  traces, stops = [trace[:, best, columns]], [stops]
  spectra = filter_spectra(estimates, sample_rate, settings.floor_db)
  return LayerFilters(
      layer=layer,
      name=models.layer_names(model)[layer - 1],
      estimates=estimates,
      activation_trace=np.concatenate(traces, axis=1),
      converged_step=np.concatenate(stops),
      **spectra,
      seconds=seconds,
      compile_seconds=compile_seconds,
  )


# --- Spectra and stability measures ---------------------------------------------------------
# The definitions of ../shared/tools/figure2_stability.py, which reads filters.npz: power
# spectrum of the mean-removed, Hann-windowed estimate without its DC bin, log of it
# smoothed over 9 bins, flatness = geometric / arithmetic mean of the power.

SMOOTH_BINS = 9  # Log spectra are smoothed over this many bins before peaks and correlations.
AGREE_OCTAVES = 1 / 6  # Two peaks agree when they are less than this far apart.


def power_spectrum(estimates: np.ndarray) -> np.ndarray:
  """Hann-windowed power spectrum of the mean-removed estimates, DC bin dropped: `(F, L//2)`."""
  x = np.asarray(estimates, np.float64)
  window = np.hanning(x.shape[-1])
  spectrum = np.fft.rfft((x - x.mean(-1, keepdims=True)) * window, axis=-1)[..., 1:]
  return np.abs(spectrum) ** 2 + 1e-20


def smoothed_log_power(power: np.ndarray) -> np.ndarray:
  """10 log10 of the power averaged over SMOOTH_BINS neighbouring bins (zero-padded ends)."""
  kernel = np.ones(SMOOTH_BINS) / SMOOTH_BINS
  smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), -1, power)
  return 10 * np.log10(smooth)


def spectral_flatness(power: np.ndarray) -> np.ndarray:
  """Geometric / arithmetic mean of each power spectrum (white noise of 729 samples: 0.56)."""
  return np.exp(np.log(power).mean(-1)) / power.mean(-1)


def filter_spectra(
    estimates: np.ndarray, sample_rate: float, floor_db: float = 60.0
) -> dict[str, np.ndarray]:
  """Spectra of `(filters, samples)` estimates, as `LayerFilters` fields.

  `magnitude` is |rfft| of the raw estimate; `log_magnitude` (what the figures show) is the
  smoothed log power above, in dB re each filter's maximum and floored at -floor_db, with
  the DC bin at the floor; `peak_hz` is where it is largest, `order` sorts the filters by
  it (stable, so ties keep filter order) and `flatness` is the spectral flatness.
  """
  estimates = np.asarray(estimates, np.float64)
  frequencies = np.fft.rfftfreq(estimates.shape[1], d=1.0 / sample_rate)
  power = power_spectrum(estimates)
  log_power = smoothed_log_power(power)
  relative = np.maximum(log_power - log_power.max(axis=1, keepdims=True), -floor_db)
  log_magnitude = np.concatenate([np.full((len(estimates), 1), -floor_db), relative], axis=1)
  peak_hz = frequencies[1:][log_power.argmax(axis=1)]
  return dict(
      frequencies=frequencies,
      magnitude=np.abs(np.fft.rfft(estimates, axis=1)),
      log_magnitude=log_magnitude,
      peak_hz=peak_hz,
      order=np.argsort(peak_hz, kind="stable"),
      flatness=spectral_flatness(power),
  )


def seed_stability(first: np.ndarray, second: np.ndarray, sample_rate: float) -> dict[str, np.ndarray]:
  """Per filter, how alike the estimates of two seeds are: `r` and `peaks_agree`.

  `r`: Pearson correlation of the two mean-removed smoothed log power spectra; `peaks_agree`:
  their maxima are less than a sixth of an octave apart.
  """
  a, b = smoothed_log_power(power_spectrum(first)), smoothed_log_power(power_spectrum(second))
  a -= a.mean(-1, keepdims=True)
  b -= b.mean(-1, keepdims=True)
  r = (a * b).sum(-1) / np.sqrt((a**2).sum(-1) * (b**2).sum(-1))
  frequencies = np.fft.rfftfreq(np.shape(first)[-1], 1.0 / sample_rate)[1:]
  octaves = np.abs(np.log2(frequencies[a.argmax(-1)] / frequencies[b.argmax(-1)]))
  return {"r": r, "peaks_agree": octaves < AGREE_OCTAVES}


def visualize_filters(
    model: models.SampleLevelCNN,
    variables: Any,
    settings: ml_collections.ConfigDict | None = None,
    sample_rate: float = 16000.0,
    progress: Callable[[LayerFilters], None] | None = None,
) -> list[LayerFilters]:
  """Estimates and spectra of the filters of `settings.layers` (default: every layer).

  Works on any model variant, trained or freshly initialised. With
  `settings.stability_seeds` = n > 1 every layer is estimated n times (seeds seed ..
  seed + n - 1) and the result carries the other seeds' estimates and the seed-to-seed
  measures. `progress` is called with each finished layer (e.g. to log timings).
  """
  settings = settings or default_config()
  _check_settings(settings)
  layers = list(settings.layers) or list(range(1, model.num_blocks + 2))
  _check_layers(layers, model.num_blocks + 1)
  results = []
  for layer in layers:
    compiled = {}  # One compile per layer, whatever the number of seeds.
    result = estimate_layer(model, variables, layer, settings, sample_rate, None, compiled)
    if settings.stability_seeds > 1:
      others = [
          estimate_layer(model, variables, layer, settings, sample_rate, settings.seed + s,
                         compiled)
          for s in range(1, settings.stability_seeds)
      ]
      pairs = [seed_stability(result.estimates, o.estimates, sample_rate) for o in others]
      result = dataclasses.replace(
          result,
          seed_estimates=np.stack([o.estimates for o in others]),
          seed_r=np.mean([p["r"] for p in pairs], axis=0),
          seed_peaks_agree=np.mean([p["peaks_agree"] for p in pairs], axis=0),
          seconds=result.seconds + sum(o.seconds for o in others),
          compile_seconds=result.compile_seconds + sum(o.compile_seconds for o in others),
      )
    results.append(result)
    if progress is not None:
      progress(results[-1])
  return results


# --- Figures and files --------------------------------------------------------------------

MAX_KHZ = 8.0  # The paper's y axis: 0-8 kHz (or up to Nyquist if that is lower).


def _draw_layer(ax, result: LayerFilters, sample_rate: float, floor_db: float):
  num_filters = result.estimates.shape[0]
  image = ax.imshow(
      result.log_magnitude[result.order].T,
      origin="lower",
      aspect="auto",
      extent=(0, num_filters, 0, sample_rate / 2000.0),
      cmap="magma",
      vmin=-floor_db,
      vmax=0.0,
      interpolation="nearest",
  )
  ax.set_ylim(0, min(MAX_KHZ, sample_rate / 2000.0))
  return image


def plot_runs(
    runs: Sequence[tuple[str, Sequence[LayerFilters]]],
    sample_rate: float = 16000.0,
    floor_db: float = 60.0,
) -> Figure:
  """Figure 2 for several runs: one column per run, one row per layer.

  Each panel: filters sorted by peak frequency (x) against 0-8 kHz (y), colour = smoothed
  log power in dB re each filter's peak. Runs may have different layers; a run without a
  layer leaves its panel empty.
  """
  layers = sorted({r.layer for _, results in runs for r in results})
  figure = Figure(figsize=(2.4 * len(runs) + 1.0, 1.5 * len(layers) + 0.6), layout="constrained")
  axes = figure.subplots(len(layers), len(runs), squeeze=False)
  image = None
  for column, (name, results) in enumerate(runs):
    by_layer = {r.layer: r for r in results}
    axes[0, column].set_title(name, fontsize=9)
    for row, layer in enumerate(layers):
      ax = axes[row, column]
      ax.tick_params(labelsize=7)
      if layer not in by_layer:
        ax.set_axis_off()
        continue
      image = _draw_layer(ax, by_layer[layer], sample_rate, floor_db)
      if column == 0:
        ax.set_ylabel(f"layer {layer}\nkHz", fontsize=8)
  for ax in axes[-1]:
    ax.set_xlabel("filter (sorted)", fontsize=8)
  if image is not None:
    figure.colorbar(image, ax=axes.ravel().tolist(), label="dB re filter peak", shrink=0.6)
  return figure


def plot_filters(
    results: Sequence[LayerFilters], sample_rate: float = 16000.0, floor_db: float = 60.0,
    name: str = "",
) -> Figure:
  """One run's Figure 2: `plot_runs` with a single column."""
  return plot_runs([(name, results)], sample_rate, floor_db)


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
    "estimates", "activation_trace", "converged_step", "frequencies", "magnitude",
    "log_magnitude", "peak_hz", "order", "flatness",
)


def layer_summary(result: LayerFilters) -> dict[str, Any]:
  """The per-layer line of filters.json: sizes, timing, convergence, flatness, stability."""
  trace = result.activation_trace
  summary = {
      "layer": result.layer, "name": result.name, "filters": int(result.estimates.shape[0]),
      "input_size": int(result.estimates.shape[1]), "seconds": round(result.seconds, 3),
      "compile_seconds": round(result.compile_seconds, 3),
      "steps_run": int(trace.shape[0] - 1),
      "converged": float(np.mean(result.converged_step >= 0)),
      "mean_activation_start": float(trace[0].mean()),
      "mean_activation_end": float(trace[-1].mean()),
      "median_flatness": float(np.median(result.flatness)),
  }
  if result.seed_r is not None:
    summary["median_seed_r"] = float(np.median(result.seed_r))
    summary["peak_agreement"] = float(np.mean(result.seed_peaks_agree))
  return summary


def save_filters(
    results: Sequence[LayerFilters],
    out_dir: str | Path,
    sample_rate: float,
    settings: ml_collections.ConfigDict,
    figure: Figure | None = None,
) -> dict[str, Path]:
  """Writes the files `docs/visualize.md` lists; returns them by name.

  `filters.npz`: `layers`, `sample_rate` and, per layer k, `layer<k>_<field>` for the
  `LayerFilters` array fields. `filters.json`: settings and a line per layer
  (`layer_summary`). `layer<kk>_<name>.png`: one image per layer. `filters.png`: Figure 2.
  With stability_seeds = n > 1 also `seed<s>/filters.npz` (s = 1 .. n - 1) with the other
  seeds' estimates, so that `figure2_stability.py OUT OUT/seed1` recomputes the numbers.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  layers = np.array([r.layer for r in results])
  arrays = {"layers": layers, "sample_rate": np.array(sample_rate)}
  for r in results:
    arrays.update({f"layer{r.layer}_{field}": getattr(r, field) for field in NPZ_FIELDS})
  paths = {"npz": out / "filters.npz", "json": out / "filters.json", "figure": out / "filters.png"}
  np.savez_compressed(paths["npz"], **arrays)
  for s in range(1, settings.stability_seeds):
    path = out / f"seed{s}" / "filters.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(path, layers=layers, sample_rate=np.array(sample_rate), **{
        f"layer{r.layer}_estimates": r.seed_estimates[s - 1] for r in results
    })
    paths[f"seed{s}"] = path
  summary = {
      "settings": settings.to_dict(),
      "sample_rate": sample_rate,
      "layers": [layer_summary(r) for r in results],
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

  Returns the per-layer results, the Figure 2 of this run and the written files (none
  when `out_dir` is None; the CLI defaults it to `<workdir>/filters`).
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
  name = Path(workdir).name if workdir else "untrained"
  figure = plot_filters(results, config.sample_rate, settings.floor_db, name)
  paths = {}
  if out_dir is not None:
    paths = save_filters(results, out_dir, config.sample_rate, settings, figure)
  return results, figure, paths


_FLAG_HELP = {
    "workdir": "Training workdir whose checkpoint to visualise; repeat for several runs.",
    "config": "Run config (file.py[:arg] or config.json); default: each workdir's config.json.",
    "which": "Checkpoint: best | latest.",
    "untrained": "Visualise a freshly initialised model of --config (no checkpoint).",
    "out_dir": "Output folder; default <workdir>/filters (required with several workdirs).",
}


def _define_flags(flag_values):
  from absl import flags

  flags.DEFINE_multi_string("workdir", [], _FLAG_HELP["workdir"], flag_values=flag_values)
  flags.DEFINE_string("config", None, _FLAG_HELP["config"], flag_values=flag_values)
  flags.DEFINE_string("which", "best", _FLAG_HELP["which"], flag_values=flag_values)
  flags.DEFINE_bool("untrained", False, _FLAG_HELP["untrained"], flag_values=flag_values)
  flags.DEFINE_string("out_dir", None, _FLAG_HELP["out_dir"], flag_values=flag_values)
  define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
            tuple: flags.DEFINE_list}
  defaults = default_config()
  for name, default in defaults.items():  # Each setting has a flag of its name.
    define[type(default)](name, None, f"Setting (default {default!r}); see docs/visualize.md.",
                          flag_values=flag_values)
  return flag_values


def _run_name(workdir: str, taken: set[str]) -> str:
  name = Path(workdir).resolve().name or "run"
  unique, i = name, 1
  while unique in taken:
    i += 1
    unique = f"{name}_{i}"
  taken.add(unique)
  return unique


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
  """Command line: `python -m samplecnn_jax.visualize --workdir=DIR [--workdir=DIR2 ...]`.

  Flags are parsed into a private FlagValues, so this runs in-process (tests, notebooks)
  next to other modules' absl flags. Returns the written files (for several workdirs,
  `figure2` and each run's files keyed `<run>/<name>`).
  """

  from samplecnn_jax.workdir import read_config as load_config

  argv = list(sys.argv if argv is None else argv)
  f = cli.parse_absl(_define_flags, argv)
  if f is None:  # --help was printed.
    return {}
  workdirs = list(f.workdir)
  if f.untrained and workdirs:
    raise SystemExit("--untrained visualises a fresh model: give it --config, not --workdir.")
  if f.untrained and not f.config:
    raise SystemExit("--untrained needs --config=FILE.py[:ARG] (the model to initialise).")
  if not f.untrained and not workdirs:
    raise SystemExit("Give --workdir=DIR (its best checkpoint is visualised) or --untrained.")
  if f.untrained and not f.out_dir:
    raise SystemExit("With --untrained, give --out_dir for the output files.")
  if len(workdirs) > 1 and not f.out_dir:
    raise SystemExit("With several --workdir, give --out_dir: figure2.png and one folder per "
                     "run go there.")

  def report(result: LayerFilters):
    trace = result.activation_trace
    stability = ""
    if result.seed_r is not None:
      stability = (f", seeds r {np.median(result.seed_r):.2f} agree "
                   f"{np.mean(result.seed_peaks_agree):.2f}")
    print(
        f"layer {result.layer:2d} {result.name:10s} {trace.shape[1]:4d} filters "
        f"x {result.estimates.shape[1]:6d} samples: {result.seconds:7.2f} s, "
        f"{trace.shape[0] - 1:4d} steps, converged {np.mean(result.converged_step >= 0):4.0%}, "
        f"flatness {np.median(result.flatness):.2f}{stability}",
        flush=True,
    )

  runs, all_paths, taken = [], {}, set()
  sample_rate, floor_db = 16000.0, default_config().floor_db
  for workdir in workdirs or [None]:
    try:
      config = load_config(workdir, f.config) if workdir or f.config else None
    except FileNotFoundError as error:
      raise SystemExit(str(error)) from None
    settings = visualize_config(config)
    for name in default_config().keys():
      value = getattr(f, name)
      if value is not None:
        settings[name] = tuple(int(k) for k in value) if name == "layers" else value
    name = _run_name(workdir, taken) if workdir else "untrained"
    if len(workdirs) > 1:
      out_dir = Path(f.out_dir) / name
    else:
      out_dir = Path(f.out_dir or Path(workdir) / "filters")
    print(f"{name}: {workdir or 'untrained ' + f.config} -> {out_dir}", flush=True)
    try:
      results, _, paths = run(
          config, workdir, untrained=f.untrained, which=f.which, settings=settings,
          out_dir=out_dir, progress=report,
      )
    except FileNotFoundError as error:
      raise SystemExit(f"{error}\n(--untrained visualises a freshly initialised model.)") from None
    runs.append((name, results))
    sample_rate, floor_db = config.sample_rate, settings.floor_db
    all_paths.update(paths if len(workdirs) <= 1 else {f"{name}/{k}": p for k, p in paths.items()})
  if len(workdirs) > 1:
    all_paths["figure2"] = Path(f.out_dir) / "figure2.png"
    plot_runs(runs, sample_rate, floor_db).savefig(all_paths["figure2"], dpi=120)
    print(f"Wrote {all_paths['figure2']} ({len(runs)} runs side by side)")
  else:
    print(f"Wrote {len(all_paths)} files to {out_dir}: filters.png, filters.npz, filters.json, "
          f"layer<k>_<name>.png")
  return all_paths


if __name__ == "__main__":
  main()
