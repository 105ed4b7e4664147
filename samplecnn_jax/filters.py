"""Filter estimates by activation maximisation, as in `paper.md` section 4: the JAX engine.

For every filter of a convolutional layer, gradient ascent finds the input waveform that
maximises the filter's mean activation, starting from its best probe tone; `LayerAscent`
holds one layer's compiled steps and tone sweep, reused for every seed, and
`estimate_filters` runs it over the layers of a model. Results are `LayerFilters` records of
numpy arrays, their spectra computed by `samplecnn_jax.spectra`.

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

What this module is not for: figures, files and the command line (`samplecnn_jax.visualize`);
training or checkpoint writing (it reads checkpoints only through
`checkpointing.load_variables`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from samplecnn_jax import checkpointing, models, spectra

TARGETS = ("pre_relu", "output")
ASCENT_OPTIMIZERS = ("adam", "normalised_gradient")
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
  seconds: float  # Wall time of the layer: compile, tone sweep and every seed's ascent.
  compile_seconds: float  # Of which compiling the jitted ascent (once per layer).
  # With stability_seeds = n > 1: the estimates of seeds seed + 1 .. seed + n - 1, and per
  # filter the log-spectrum correlation and peak agreement with them (means over those seeds).
  seed_estimates: np.ndarray | None = None  # (n - 1, filters, samples).
  seed_r: np.ndarray | None = None  # (filters,).
  seed_peaks_agree: np.ndarray | None = None  # (filters,): share of seeds within 1/6 octave.


# --- The model -----------------------------------------------------------------------------


def load_model(
    config: ml_collections.ConfigDict, workdir: str | None = None, checkpoint: str = "best"
) -> tuple[models.SampleLevelCNN, Any]:
  """The model of `config` and its variables: the `checkpoint` (best | latest) of `workdir`,
  or, with `workdir=None`, freshly initialised from `config.seed`."""
  model = models.create_model(config.model, config.num_classes)
  if workdir is None:
    variables = model.init(
        jax.random.key(config.seed), jnp.zeros((1, config.input_size), jnp.float32), train=False
    )
  else:
    loaded = checkpointing.read_checkpoint(workdir, config, checkpoint)  # Falls back if damaged.
    if loaded.note:
      logging.warning("%s", loaded.note)
    variables = loaded.variables
  return model, variables


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


# --- Starting points ---------------------------------------------------------------------


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
    model: models.SampleLevelCNN, variables: Any, layer: int, settings: ml_collections.ConfigDict,
    length: int, sample_rate: float,
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


# --- Norm-constrained ascent ---------------------------------------------------------------


def _ascent_fns(
    model: models.SampleLevelCNN, layer: int, settings: ml_collections.ConfigDict
) -> tuple[Callable, Callable, optax.GradientTransformation]:
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


def step_sizes(settings: ml_collections.ConfigDict) -> np.ndarray:
  """The step schedule: cosine decay from `step_size` to a tenth of it over `steps`."""
  t = np.arange(max(settings.steps, 1)) / max(settings.steps - 1, 1)
  return settings.step_size * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)))


def _converged(trace: list[np.ndarray], settings: ml_collections.ConfigDict) -> np.ndarray:
  """The stop rule, per filter: its target moved by at most `tolerance` times its total gain
  over the last `window` steps."""
  now, before = trace[-1], trace[-1 - settings.window]
  gain = np.abs(now - trace[0])
  return np.abs(now - before) <= settings.tolerance * np.maximum(gain, 1e-12)


@dataclasses.dataclass(frozen=True)
class SeedAscent:
  """What one seed's ascent of a layer found (the best start of each filter)."""

  estimates: np.ndarray  # (filters, samples).
  activation_trace: np.ndarray  # (steps run + 1, filters).
  converged_step: np.ndarray  # (filters,): -1 = not converged.
  seconds: float  # Wall time of this seed's ascent.


class LayerAscent:
  """The ascent of every filter of one layer, compiled once and run for any number of seeds.

  Building it checks the settings, compiles the step and the target for one chunk of
  filters (vmapped, jitted) and, for `init='tone'`, runs the tone sweep, which does not
  depend on the seed: stability seeds then cost only their ascent. `step` and `target` are
  the compiled functions (e.g. for XLA's cost analysis).
  """

  def __init__(
      self,
      model: models.SampleLevelCNN,
      variables: Any,
      layer: int,
      settings: ml_collections.ConfigDict,
      sample_rate: float,
  ):
    _check_settings(settings)
    _check_layers([layer], model.num_blocks + 1)
    self.model = model.clone(dtype=jnp.float32, remat=False)  # Same parameters, float32.
    self.variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    self.layer, self.settings, self.sample_rate = layer, settings, sample_rate
    self.name = models.layer_names(self.model)[layer - 1]
    self.length = layer_input_size(layer, settings.input_size)
    models.check_input_size(self.length, layer - 1, self.model.front_padding)
    widths = [self.model.base_width] + models.block_widths(self.model.num_blocks,
                                                           self.model.base_width)
    self.num_filters = widths[layer - 1]
    self.starts = self.num_filters * settings.restarts  # Start s ascends filter s % filters.
    chunk = settings.chunk_size or max(1, AUTO_CHUNK_SAMPLES // self.length)
    self.chunk = min(chunk, self.starts)
    self.num_chunks = -(-self.starts // self.chunk)

    start = time.perf_counter()
    self.step, self.target, self.adam = self._compile()
    self.compile_seconds = time.perf_counter() - start
    self.tones = None  # (filters, length): each filter's best probe tone at RMS input_rms.
    if settings.init == "tone":
      self.tones = best_tones(self.model, self.variables, layer, settings, self.length,
                              sample_rate)
    self.setup_seconds = time.perf_counter() - start

  def _compile(self) -> tuple[jax.stages.Compiled, jax.stages.Compiled,
                              optax.GradientTransformation]:
    step, target, adam = _ascent_fns(self.model, self.layer, self.settings)
    x_shape = jax.ShapeDtypeStruct((self.chunk, self.length), jnp.float32)
    f_shape = jax.ShapeDtypeStruct((self.chunk,), jnp.int32)
    state_shape = jax.eval_shape(adam.init, x_shape)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    mask = jax.ShapeDtypeStruct((self.chunk,), jnp.float32)
    step = step.lower(self.variables, x_shape, state_shape, f_shape, scalar, mask,
                      jax.random.key(0)).compile()
    return step, target.lower(self.variables, x_shape, f_shape).compile(), adam

  def starting_points(self, seed: int) -> jax.Array:
    """`(num_chunks * chunk, length)`: start s is filter s % num_filters's best tone plus the
    seed's (smaller) noise, or that noise alone (`init='noise'`); the last chunk is padded
    with extra starts, so every chunk has one shape."""
    noise_rms = self.settings.init_rms * self.settings.input_rms
    noise = starting_noise(seed, self.layer, self.num_chunks * self.chunk, self.length,
                           noise_rms)
    if self.tones is None:
      return noise
    tones = self.tones * (noise_rms / self.settings.input_rms)
    filters = np.arange(self.num_chunks * self.chunk) % self.num_filters
    return tones[filters] + self.settings.tone_noise * noise

  def _ascend_chunk(
      self, x: jax.Array, first: int, seed: int, lrs: np.ndarray
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascends starts `first .. first + chunk`: their estimates, trace `(steps run + 1,
    chunk)` and converged step. A start that met the stop rule is frozen (its estimate does
    not depend on its chunk-mates); the chunk ends when all its real starts have."""
    settings = self.settings
    filters = jnp.asarray(np.arange(first, first + self.chunk, dtype=np.int32) % self.num_filters)
    adam_state = self.adam.init(x)
    keep = min(self.chunk, self.starts - first)
    stop = np.full(self.chunk, -1)
    trace = []
    key = jax.random.fold_in(jax.random.key(seed), 1000 + self.layer)
    for t in range(settings.steps):
      active = jnp.asarray(stop < 0, jnp.float32)
      x, adam_state, value = self.step(
          self.variables, x, adam_state, filters, np.float32(lrs[t]), active,
          jax.random.fold_in(key, first * settings.steps + t),
      )
      trace.append(np.asarray(value))
      if t >= settings.window:
        stop = np.where((stop < 0) & _converged(trace, settings), t, stop)
        if np.all(stop[:keep] >= 0):
          break
    trace.append(np.asarray(self.target(self.variables, x, filters)))
    trace = np.stack(trace)  # Frozen filters keep their value: x no longer moves.
    return np.asarray(x)[:keep], trace[:, :keep], stop[:keep]

  def ascend(self, seed: int) -> SeedAscent:
    """One seed's ascent of every filter: chunk by chunk, then the best of its restarts."""
    start = time.perf_counter()
    starts = self.starting_points(seed)
    lrs = step_sizes(self.settings)
    chunks = [
        self._ascend_chunk(starts[first : first + self.chunk], first, seed, lrs)
        for first in range(0, self.starts, self.chunk)
    ]
    seconds = time.perf_counter() - start
    return self._best_starts(*zip(*chunks, strict=True), seconds=seconds)

  def _best_starts(
      self, estimates: Sequence[np.ndarray], traces: Sequence[np.ndarray],
      stops: Sequence[np.ndarray], seconds: float,
  ) -> SeedAscent:
    """Per filter, the start (of `restarts`) that reached the highest target; traces of
    chunks that stopped early are extended with their last value."""
    restarts, num_filters = self.settings.restarts, self.num_filters
    longest = max(len(t) for t in traces)
    trace = np.concatenate(
        [np.concatenate([t, np.repeat(t[-1:], longest - len(t), axis=0)]) for t in traces],
        axis=1,
    ).reshape(longest, restarts, num_filters)
    best = trace[-1].argmax(axis=0)
    columns = np.arange(num_filters)
    return SeedAscent(
        estimates=np.concatenate(estimates).reshape(restarts, num_filters, self.length)[
            best, columns],
        activation_trace=trace[:, best, columns],
        converged_step=np.concatenate(stops).reshape(restarts, num_filters)[best, columns],
        seconds=seconds,
    )

  def estimate(self) -> LayerFilters:
    """The layer's `LayerFilters`: seed `settings.seed`, its spectra and, with
    `stability_seeds` = n > 1, seeds seed + 1 .. seed + n - 1 and their stability measures.

    `seconds` counts this ascent's setup (compile, tone sweep) and every seed's ascent.
    """
    settings = self.settings
    runs = [self.ascend(settings.seed + s) for s in range(settings.stability_seeds)]
    first, others = runs[0], runs[1:]
    stability = {}
    if others:
      measures = spectra.mean_seed_stability(
          first.estimates, [o.estimates for o in others], self.sample_rate
      )
      stability = dict(
          seed_estimates=np.stack([o.estimates for o in others]),
          seed_r=measures["r"],
          seed_peaks_agree=measures["peaks_agree"],
      )
    return LayerFilters(
        layer=self.layer,
        name=self.name,
        estimates=first.estimates,
        activation_trace=first.activation_trace,
        converged_step=first.converged_step,
        **spectra.filter_spectra(first.estimates, self.sample_rate, settings.floor_db),
        seconds=self.setup_seconds + sum(r.seconds for r in runs),
        compile_seconds=self.compile_seconds,
        **stability,
    )


def _check_settings(settings: ml_collections.ConfigDict) -> None:
  if settings.init not in INITS:
    raise ValueError(f"Unknown init {settings.init!r}; choose one of {', '.join(INITS)}.")
  if settings.target not in TARGETS:
    raise ValueError(f"Unknown target {settings.target!r}; choose one of {', '.join(TARGETS)}.")
  if settings.optimizer not in ASCENT_OPTIMIZERS:
    raise ValueError(
        f"Unknown optimizer {settings.optimizer!r}; choose one of {', '.join(ASCENT_OPTIMIZERS)}."
    )
  if (settings.steps < 0 or settings.input_size < 3 or settings.chunk_size < 0
      or settings.jitter < 0 or settings.window < 1 or not settings.input_rms > 0
      or not settings.init_rms > 0 or settings.restarts < 1
      or settings.stability_seeds < 1 or settings.tones < 1 or settings.tone_noise < 0):
    raise ValueError(
        "Need steps >= 0, input_size >= 3, chunk_size >= 0, jitter >= 0, window >= 1, "
        "input_rms > 0, init_rms > 0, restarts >= 1, tones >= 1, tone_noise >= 0 and "
        f"stability_seeds >= 1; got steps={settings.steps}, "
        f"input_size={settings.input_size}, chunk_size={settings.chunk_size}, "
        f"jitter={settings.jitter}, window={settings.window}, input_rms={settings.input_rms}, "
        f"init_rms={settings.init_rms}, restarts={settings.restarts}, tones={settings.tones}, "
        f"tone_noise={settings.tone_noise}, stability_seeds={settings.stability_seeds}."
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
  """Runs the ascent for every filter of `layer` (vmapped in chunks, jitted once).

  Stop rule: filter f has converged at step t >= window when its target changed by at most
  `tolerance` times its total gain over the last `window` steps; it is then frozen
  (`converged_step` records t, -1 if it never met the rule) while the others go on, so its
  estimate does not depend on its chunk-mates, and a chunk ends when all its filters have
  converged or after `steps` steps. With `stability_seeds` > 1 the other seeds reuse the
  compiled steps and the tone sweep (`LayerAscent`).
  """
  return LayerAscent(model, variables, layer, settings, sample_rate).estimate()


def estimate_filters(
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
    results.append(estimate_layer(model, variables, layer, settings, sample_rate))
    if progress is not None:
      progress(results[-1])
  return results
