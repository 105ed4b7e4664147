"""One module per dataset; each turns a raw download into a `common.Listing` for `prepare`.

`DATASETS` maps the name given to `python -m samplecnn_jax.prepare NAME` to the module, the
function that lists its clips and the function that defines its own flags (absl, on the
command's `FlagValues`). Modules are imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from absl import flags

# name -> (module under samplecnn_jax.datasets, listing function, flag-defining function)
DATASETS: dict[str, tuple[str, str, str]] = {
    "mtat": ("mtat", "list_clips", "define_flags"),
    "speech_commands": ("speech_commands", "list_clips", "define_flags"),
    "dcase2017": ("dcase2017", "list_clips", "define_flags"),
    "folder": ("folder", "list_folder", "define_folder_flags"),
    "csv": ("folder", "list_csv", "define_csv_flags"),
    "demo": ("demo", "list_clips", "define_flags"),
    "hf": ("hf", "list_clips", "define_flags"),
}


def get_module(name: str) -> ModuleType:
  """The module of dataset `name`, naming the valid choices for an unknown name."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}.")
  return importlib.import_module(f"samplecnn_jax.datasets.{DATASETS[name][0]}")


def get_lister(name: str):
  """The `list_...(src, **options) -> Listing` function of dataset `name`."""
  return getattr(get_module(name), DATASETS[name][1])


def get_flag_definer(name: str) -> Callable[[flags.FlagValues], None]:
  """The `define_...(flag_values)` function that defines dataset `name`'s own flags."""
  return getattr(get_module(name), DATASETS[name][2])
