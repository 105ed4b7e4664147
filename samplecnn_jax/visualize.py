"""Figures and files of the filter estimates, and the `python -m samplecnn_jax.visualize` command.

The paper's Figure 2 (`paper.md` section 4): the magnitude spectra of the
activation-maximisation estimates of `samplecnn_jax.filters`, sorted by peak frequency, as
one image per layer and one figure per run (or one column per run), and the files
`docs/visualize.md` lists (`filters.npz`, `filters.json`, PNGs). From Python or a notebook:
`visualize_run` (one model: results, figure, files) and `visualize_workdirs` (what the
command does: several workdirs, their files and `figure2.png`); the command is a thin layer
over `visualize_workdirs` (flags, printing, exit codes 0 / 2).

What this module is not for: the ascent (`samplecnn_jax.filters`) and the spectrum maths
(`samplecnn_jax.spectra`); training, evaluation or checkpoint writing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from matplotlib.figure import Figure

from samplecnn_jax import cli, filters, store, workdir_files

# --- Figures and files --------------------------------------------------------------------

MAX_KHZ = 8.0  # The paper's y axis: 0-8 kHz (or up to Nyquist if that is lower).


def _draw_layer(ax, result: filters.LayerFilters, sample_rate: float, floor_db: float):
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
    runs: Sequence[tuple[str, Sequence[filters.LayerFilters]]],
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
    results: Sequence[filters.LayerFilters], sample_rate: float = 16000.0, floor_db: float = 60.0,
    name: str = "",
) -> Figure:
  """One run's Figure 2: `plot_runs` with a single column."""
  return plot_runs([(name, results)], sample_rate, floor_db)


def plot_layer(
    result: filters.LayerFilters, sample_rate: float = 16000.0, floor_db: float = 60.0
) -> Figure:
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


def layer_summary(result: filters.LayerFilters) -> dict[str, Any]:
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
    results: Sequence[filters.LayerFilters],
    out_dir: str | Path,
    sample_rate: float,
    settings: ml_collections.ConfigDict,
    figure: Figure | None = None,
) -> dict[str, Path]:
  """Writes the files `docs/visualize.md` lists; returns them by name.

  `filters.npz`: `layers`, `sample_rate` and, per layer k, `layer<k>_<field>` for the
  `filters.LayerFilters` array fields. `filters.json`: settings and a line per layer
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
  figure = figure or plot_filters(results, sample_rate, settings.floor_db)
  figure.savefig(paths["figure"], dpi=120)
  return paths


# --- Engine: models to files ---------------------------------------------------------------


def visualize_run(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    *,
    untrained: bool = False,
    checkpoint: str = "best",
    settings: ml_collections.ConfigDict | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[filters.LayerFilters], None] | None = None,
) -> tuple[list[filters.LayerFilters], Figure, dict[str, Path]]:
  """Visualises the model of `config`: the `checkpoint` (best | latest) of `workdir`, or
  freshly initialised with `untrained=True`.

  Returns the per-layer results, the Figure 2 of this run and the written files (none
  when `out_dir` is None; the command defaults it to `<workdir>/filters`). A workdir without
  that checkpoint raises FileNotFoundError.
  """
  if not untrained and not workdir:
    raise ValueError("Give the workdir whose checkpoint to visualise, or untrained=True.")
  try:
    model, variables = filters.load_model(config, None if untrained else workdir, checkpoint)
  except FileNotFoundError as error:
    raise FileNotFoundError(
        f"{error} (--untrained visualises a freshly initialised model.)") from error
  settings = settings or filters.visualize_config(config)
  results = filters.estimate_filters(model, variables, settings, config.sample_rate, progress)
  name = Path(workdir).name if workdir else "untrained"
  figure = plot_filters(results, config.sample_rate, settings.floor_db, name)
  paths = {}
  if out_dir is not None:
    paths = save_filters(results, out_dir, config.sample_rate, settings, figure)
  return results, figure, paths


def _run_name(workdir: str, taken: set[str]) -> str:
  name = Path(workdir).resolve().name or "run"
  unique, i = name, 1
  while unique in taken:
    i += 1
    unique = f"{name}_{i}"
  taken.add(unique)
  return unique


def visualize_workdirs(
    workdirs: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    config_file: str | None = None,
    untrained: bool = False,
    checkpoint: str = "best",
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[filters.LayerFilters], None] | None = None,
    on_run: Callable[[str, str, Path], None] | None = None,
) -> dict[str, Path]:
  """Visualises each workdir's `checkpoint` (or, with `untrained=True` and no workdirs, a
  fresh model of `config_file`) and writes its files; returns the written files.

  Each run's config is `config_file` (`file.py[:arg]` or a config.json) or its workdir's
  `config.json`; its settings are `filters.visualize_config(config)` updated with
  `overrides` (setting name -> value). One workdir writes to `out_dir` (default
  `<workdir>/filters`); several write one folder per run under `out_dir` (required) and
  `out_dir/figure2.png` with one column per run, and the files are keyed `<run>/<name>`
  plus `figure2`. `on_run(name, source, out_dir)` is called before each run, `progress`
  after each layer.
  """
  if len(workdirs) > 1 and out_dir is None:
    raise ValueError("Several workdirs need an out_dir for figure2.png and one folder per run.")
  if untrained and (workdirs or not config_file or out_dir is None):
    raise ValueError("untrained=True visualises a fresh model of config_file into out_dir: "
                     "give both, and no workdirs.")
  if not untrained and not workdirs:
    raise ValueError("Give the workdirs whose checkpoints to visualise, or untrained=True.")
  runs, paths, taken = [], {}, set()
  for workdir in workdirs or [None]:
    config = workdir_files.read_config(workdir, config_file)
    settings = filters.visualize_config(config)
    settings.update(dict(overrides or {}))
    name = _run_name(workdir, taken) if workdir else "untrained"
    if len(workdirs) > 1:
      run_dir = Path(out_dir) / name
    else:
      run_dir = Path(out_dir or Path(workdir) / "filters")
    if on_run is not None:
      on_run(name, workdir or f"untrained {config_file}", run_dir)
    results, _, run_paths = visualize_run(
        config, workdir, untrained=untrained, checkpoint=checkpoint, settings=settings,
        out_dir=run_dir, progress=progress,
    )
    runs.append((name, results))
    paths.update(run_paths if len(workdirs) <= 1 else
                 {f"{name}/{k}": p for k, p in run_paths.items()})
  if len(workdirs) > 1:
    paths["figure2"] = Path(out_dir) / "figure2.png"
    plot_runs(runs, config.sample_rate, settings.floor_db).savefig(paths["figure2"], dpi=120)
  return paths


# --- Command line ----------------------------------------------------------------------------

PROG = "python -m samplecnn_jax.visualize"

_FLAG_HELP = {
    "workdir": "Training workdir whose checkpoint to visualise; repeat for several runs.",
    "config": "Run config (file.py[:arg] or config.json); default: each workdir's config.json.",
    "untrained": "Visualise a freshly initialised model of --config (no checkpoint).",
    "out_dir": "Output folder; default <workdir>/filters (required with several workdirs).",
}


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_multi_string("workdir", [], _FLAG_HELP["workdir"], flag_values=flag_values)
  flags.DEFINE_string("config", None, _FLAG_HELP["config"], flag_values=flag_values)
  cli.define_checkpoint(flag_values)
  flags.DEFINE_bool("untrained", False, _FLAG_HELP["untrained"], flag_values=flag_values)
  flags.DEFINE_string("out_dir", None, _FLAG_HELP["out_dir"], flag_values=flag_values)
  define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
            tuple: flags.DEFINE_list}
  for name, default in filters.default_config().items():  # Each setting has a flag of its name.
    define[type(default)](name, None, f"Setting (default {default!r}); see docs/visualize.md.",
                          flag_values=flag_values)


def _overrides(f: flags.FlagValues) -> dict[str, Any]:
  """The settings given as flags (`--layers` as a tuple of ints)."""
  overrides = {}
  for name in filters.default_config().keys():
    value = f[name].value
    if value is None:
      continue
    if name == "layers":
      try:
        value = tuple(int(k) for k in value)
      except ValueError:
        raise cli.UsageError(f"--layers={','.join(value)}: give layer numbers, e.g. "
                             "--layers=1,2,3 (1 = front conv, i + 1 = block i)") from None
    overrides[name] = value
  return overrides


def _check_usage(f: flags.FlagValues) -> None:
  workdirs = f.workdir
  if f.untrained and workdirs:
    raise cli.UsageError("--untrained visualises a fresh model of --config: drop --workdir "
                         "(or drop --untrained to visualise the workdir's checkpoint)")
  if f.untrained and not f.config:
    raise cli.UsageError("--untrained needs --config=FILE.py[:ARG] (the model to initialise)")
  if not f.untrained and not workdirs:
    raise cli.UsageError("Give --workdir=DIR (its --checkpoint is visualised) or --untrained "
                         "with --config=FILE.py[:ARG]")
  if f.untrained and not f.out_dir:
    raise cli.UsageError("With --untrained, give --out_dir for the output files")
  if len(workdirs) > 1 and not f.out_dir:
    raise cli.UsageError("With several --workdir, give --out_dir: figure2.png and one folder "
                         "per run go there")


def _report_layer(result: filters.LayerFilters) -> None:
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


def _command(f: flags.FlagValues, _: list[str]) -> int:
  _check_usage(f)
  out_dirs = []

  def announce(name: str, source: str, out_dir: Path) -> None:
    out_dirs.append(out_dir)
    print(f"{name}: {source} -> {out_dir}", flush=True)

  paths = visualize_workdirs(
      f.workdir, f.out_dir, config_file=f.config, untrained=f.untrained,
      checkpoint=f.checkpoint, overrides=_overrides(f), progress=_report_layer, on_run=announce,
  )
  if "figure2" in paths:
    print(f"Wrote {paths['figure2']} ({len(out_dirs)} runs side by side)")
  else:
    print(f"Wrote {len(paths)} files to {out_dirs[0]}: filters.png, filters.npz, filters.json, "
          f"layer<k>_<name>.png")
  return cli.EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m samplecnn_jax.visualize --workdir=DIR [--workdir=DIR2 ... --out_dir=OUT]`.

  Returns the exit code: 0 done, 2 a usage or configuration error (one line on stderr:
  what was wrong and the flag that fixes it). Runs in-process (tests, notebooks): the flags
  live on a private FlagValues.
  """
  return cli.run(PROG, _define_flags, _command, argv)


if __name__ == "__main__":
  sys.exit(main())
