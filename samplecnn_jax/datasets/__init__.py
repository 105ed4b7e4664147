"""One module per dataset; each turns a raw download into a `common.Listing` for `prepare`.

`DATASETS` maps the name given to `python -m samplecnn_jax.prepare NAME` to the module and
the function that lists its clips. Modules are imported only when used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> (module under samplecnn_jax.datasets, listing function)
DATASETS: dict[str, tuple[str, str]] = {
    "mtat": ("mtat", "list_clips"),
    "speech_commands": ("speech_commands", "list_clips"),
    "dcase2017": ("dcase2017", "list_clips"),
    "folder": ("folder", "list_folder"),
    "csv": ("folder", "list_csv"),
    "demo": ("demo", "list_clips"),
}


def get_module(name: str) -> ModuleType:
  """The module of dataset `name`, naming the valid choices for an unknown name."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}.")
  return importlib.import_module(f"samplecnn_jax.datasets.{DATASETS[name][0]}")


def get_lister(name: str):
  """The `list_...(src, **options) -> Listing` function of dataset `name`."""
  return getattr(get_module(name), DATASETS[name][1])
