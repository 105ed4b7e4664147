"""What the checkout's tests and benchmarks share: its location and its configs, by name.

Tests (`tests/`) and benchmark scripts (`benchmarks/`) both build runs from the files in
`configs/`; they share this module rather than importing each other (no test imports a
benchmark, no benchmark imports the tests' conftest). It only makes sense in a source
checkout (the configs are not installed with the package); the tools never import it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np

from samplecnn_jax import config_base, models

REPO = Path(__file__).resolve().parents[1]  # The checkout: configs/, tests/, benchmarks/.
CONFIGS = REPO / "configs"


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`configs/<name>.py` loaded the way `--config=configs/<name>.py:arg` loads it."""
  path = CONFIGS / f"{name}.py"
  if not path.is_file():
    choices = sorted(p.stem for p in CONFIGS.glob("*.py"))
    raise ValueError(f"No config {name!r} in {CONFIGS}; choose one of {choices}.")
  return config_base.load_config(f"{path}:{arg}" if arg else path)


def random_variables(config: ml_collections.ConfigDict, seed: int = 0,
                     mean_spread: float = 0.3) -> dict:
  """Variables of `config`'s model, freshly initialised, with non-trivial BatchNorm statistics
  (means in +-`mean_spread`, variances in [0.5, 1.5]), so that folding them matters."""
  model = models.create_model(config.model, config.num_classes)
  x = np.zeros((1, config.input_size), np.float32)
  variables = jax.device_get(model.init(jax.random.key(seed), x, train=False))
  rng = np.random.default_rng(seed)

  def perturb(tree):
    if "var" in tree:
      return {"mean": rng.uniform(-mean_spread, mean_spread, tree["mean"].shape).astype(np.float32),
              "var": rng.uniform(0.5, 1.5, tree["var"].shape).astype(np.float32)}
    return {name: perturb(subtree) for name, subtree in tree.items()}

  return {"params": variables["params"], "batch_stats": perturb(variables["batch_stats"])}
