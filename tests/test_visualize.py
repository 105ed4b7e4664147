"""Tests for samplecnn_jax.visualize: the files and figures of a run, and the command line.

Tiny widths only (configs/test.py: base width 4, 5 blocks, 729 samples); each layer costs
one compile, so one untrained run (through `visualize_workdirs`, what the command does) is
shared by the tests that read its files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, load_config, one_error_line

from samplecnn_jax import filters, models, visualize

SAMPLE_RATE = 16000.0
CONFIG = f"--config={REPO / 'configs' / 'test.py'}"


# --- Files of an untrained run ------------------------------------------------------------

CLI_LAYERS = (1, 2, 6)  # Widths 4, 4, 16 in configs/test.py; each layer costs a compile.
TOOL = REPO.parent / "shared" / "tools" / "figure2_stability.py"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("filters")
  paths = visualize.visualize_workdirs(
      [], out, config_file=str(REPO / "configs" / "test.py"), untrained=True,
      overrides=dict(steps=12, window=4, seed=5, stability_seeds=2, layers=CLI_LAYERS),
  )
  return out, paths


def test_cli_writes_the_documented_files_and_shapes(cli_run):
  out, paths = cli_run
  assert {p.relative_to(out).as_posix() for p in paths.values()} == {
      "filters.npz", "filters.json", "filters.png", "seed1/filters.npz",
      "layer01_front_conv.png", "layer02_block1.png", "layer06_block5.png",
  }
  for path in paths.values():
    assert path.stat().st_size > 0
    if path.suffix == ".png":
      assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  data = np.load(out / "filters.npz")
  np.testing.assert_array_equal(data["layers"], CLI_LAYERS)
  assert float(data["sample_rate"]) == SAMPLE_RATE
  summary = json.loads((out / "filters.json").read_text())
  for k, num_filters, line in zip(CLI_LAYERS, [4, 4, 16], summary["layers"], strict=True):
    assert data[f"layer{k}_estimates"].shape == (num_filters, 729)
    trace = data[f"layer{k}_activation_trace"]
    assert trace.shape == (line["steps_run"] + 1, num_filters) and 1 <= line["steps_run"] <= 12
    stop = data[f"layer{k}_converged_step"]
    assert stop.shape == (num_filters,) and np.all((stop == -1) | ((stop >= 4) & (stop < 12)))
    assert line["converged"] == pytest.approx(np.mean(stop >= 0))
    assert data[f"layer{k}_frequencies"].shape == (365,)
    assert data[f"layer{k}_magnitude"].shape == (num_filters, 365)
    log = data[f"layer{k}_log_magnitude"]
    assert log.shape == (num_filters, 365) and np.all(log.max(axis=1) == 0) and log.min() >= -60
    peak, order = data[f"layer{k}_peak_hz"], data[f"layer{k}_order"]
    assert sorted(order) == list(range(num_filters)) and np.all(np.diff(peak[order]) >= 0)
    assert line["median_flatness"] == pytest.approx(np.median(data[f"layer{k}_flatness"]))
    assert 0 <= line["peak_agreement"] <= 1 and -1 <= line["median_seed_r"] <= 1
  assert summary["settings"]["steps"] == 12 and summary["settings"]["seed"] == 5
  assert [line["input_size"] for line in summary["layers"]] == [729] * 3
  seed1 = np.load(out / "seed1" / "filters.npz")
  assert not np.allclose(seed1["layer6_estimates"], data["layer6_estimates"])


@pytest.mark.slow
@pytest.mark.skipif(not TOOL.is_file(), reason="the shared measurement script is not beside the repo")
def test_filters_json_stability_matches_the_shared_script(cli_run):
  out, _ = cli_run
  layers = ",".join(map(str, CLI_LAYERS))
  printed = subprocess.run(
      [sys.executable, str(TOOL), str(out), str(out / "seed1"), layers],
      capture_output=True, text=True, check=False,
  ).stdout
  expected = "; ".join(
      f"L{line['layer']} r={line['median_seed_r']:.2f} agree={line['peak_agreement']:.2f} "
      f"flat={line['median_flatness']:.2f}"
      for line in json.loads((out / "filters.json").read_text())["layers"]
  )
  assert printed.strip() == expected


# --- Figures ------------------------------------------------------------------------------


def test_figure_has_one_column_per_run_and_one_row_per_layer():
  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 729)), train=False)
  settings = filters.default_config()
  settings.update(dict(steps=2, layers=(1, 2)))
  results = filters.estimate_filters(model, variables, settings, SAMPLE_RATE)
  figure = visualize.plot_runs([("a", results), ("b", results[:1]), ("c", results)])
  panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
  assert len(panels) == 2 * 3
  assert [ax.get_title() for ax in panels[:3]] == ["a", "b", "c"]  # Row 1, one per run.
  assert not panels[4].axison  # Run b has no layer 2.
  assert panels[0].get_ylim() == (0.0, 8.0)


# --- Command line ---------------------------------------------------------------------------


def _usage_error(capsys, argv: list[str]) -> str:
  """Runs the command in-process; asserts exit code 2 and one error line; returns it."""
  assert visualize.main(["visualize", *argv]) == 2
  return one_error_line(capsys.readouterr().err, visualize.PROG)


def test_cli_errors_are_clear(tmp_path, capsys):
  def error(pattern: str, *argv: str) -> None:
    assert re.search(pattern, _usage_error(capsys, list(argv)))

  error("--workdir=DIR .* or --untrained", CONFIG)
  error("--out_dir", CONFIG, "--untrained")
  error("--untrained needs --config", "--untrained", f"--out_dir={tmp_path}")
  error("Run `.*--help`", CONFIG, "--steps=many")
  error("several --workdir, give --out_dir", f"--workdir={tmp_path}", f"--workdir={tmp_path}")
  error("has no config.json", f"--workdir={tmp_path}")
  error("drop --workdir", CONFIG, "--untrained", f"--workdir={tmp_path}")
  error("--layers=1,x: give layer numbers", CONFIG, "--untrained", f"--out_dir={tmp_path}",
        "--layers=1,x")
  error("layers \\[9\\] do not exist", CONFIG, "--untrained", f"--out_dir={tmp_path}",
        "--layers=9")
  error("--checkpoint: value should be one of <best|latest>", f"--workdir={tmp_path}",
        "--checkpoint=last")
  error("Unknown command line flag 'which'", f"--workdir={tmp_path}", "--which=best")


def test_cli_reads_the_workdir_config_and_without_checkpoint_points_to_untrained(tmp_path, capsys):
  (tmp_path / "config.json").write_text(load_config("test").to_json())
  error = _usage_error(capsys, [f"--workdir={tmp_path}", "--checkpoint=latest"])
  assert "--untrained visualises a freshly initialised model" in error
  assert "No latest checkpoint" in error


def test_cli_help_and_a_run_exit_0(tmp_path, capsys):
  assert visualize.main(["visualize", "--help"]) == 0
  assert "--checkpoint" in capsys.readouterr().out
  assert visualize.main(["visualize", CONFIG, "--untrained", f"--out_dir={tmp_path}",
                         "--layers=1", "--steps=2"]) == 0
  assert "Wrote 4 files" in capsys.readouterr().out
  assert (tmp_path / "filters.png").stat().st_size > 0
