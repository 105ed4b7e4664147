"""What the checkout's tests and benchmarks share: its location and its configs, by name.

Tests (`tests/`) and benchmark scripts (`benchmarks/`) both build runs from the files in
`configs/`; they share this module rather than importing each other (no test imports a
benchmark, no benchmark imports the tests' conftest). It only makes sense in a source
checkout (the configs are not installed with the package); the tools never import it.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from samplecnn_jax import config_base

REPO = Path(__file__).resolve().parents[1]  # The checkout: configs/, tests/, benchmarks/.
CONFIGS = REPO / "configs"


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`configs/<name>.py` loaded the way `--config=configs/<name>.py:arg` loads it."""
  path = CONFIGS / f"{name}.py"
  if not path.is_file():
    choices = sorted(p.stem for p in CONFIGS.glob("*.py"))
    raise ValueError(f"No config {name!r} in {CONFIGS}; choose one of {choices}.")
  return config_base.load_config(f"{path}:{arg}" if arg else path)
