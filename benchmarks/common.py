"""Helpers shared by the benchmark scripts: loading configs, timing, process memory, tables.

Benchmarks only; nothing in the package imports this. Memory figures come from Linux's
/proc (resident set size and its high-water mark), so they are process-wide: callers measure
in a fresh subprocess and subtract a baseline taken after imports and model set-up.
"""

from __future__ import annotations

import ast
import ctypes
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from samplecnn_jax import config_base

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads `configs/<name>.py` the way `--config=configs/<name>.py:arg` does."""
  path = REPO / "configs" / f"{name}.py"
  if not path.is_file():
    choices = sorted(p.stem for p in (REPO / "configs").glob("*.py"))
    raise ValueError(f"No config {name!r} in {REPO / 'configs'}; choose one of {choices}.")
  return config_base.load_config(f"{path}:{arg}" if arg else path)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `field.sub=value` strings (values parsed as Python literals, else strings)."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"Override {item!r} must look like field=value, e.g. model.remat=True.")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise ValueError(f"Unknown config field {key!r}.")
    node[leaf] = value


def time_per_call(fn: Callable[[], object], calls: int) -> float:
  """Mean wall-clock seconds per call of `fn` over `calls` calls (fn must block)."""
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def median(values: Sequence[float]) -> float:
  return statistics.median(values)


# --- Process memory (Linux) ------------------------------------------------------------------


def _status_kb(field: str) -> int:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise RuntimeError(f"{field} not found in /proc/self/status (not Linux?).")


def rss_mb() -> float:
  """Current resident set size of this process, MiB."""
  return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
  """High-water mark of the resident set size since start or the last `reset_peak_rss`, MiB."""
  return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
  """Resets the RSS high-water mark to the current RSS (Linux >= 4.0); False if not allowed."""
  try:
    Path("/proc/self/clear_refs").write_text("5")
    return True
  except OSError:
    return False


def release_free_memory() -> None:
  """Returns freed heap pages to the OS (glibc malloc_trim), so RSS reflects live memory."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except OSError:
    pass


# --- Tables ------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A Markdown table; floats get 3 significant digits (or 2 decimals for ratios < 10)."""

  def cell(value: object) -> str:
    if value is None:
      return "-"
    if isinstance(value, float):
      if value != value:  # NaN
        return "-"
      return f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)

  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)
