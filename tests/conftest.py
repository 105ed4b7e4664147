"""Shared test helpers: loading config files, and where the real dataset excerpts live."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# One XLA compilation cache per test session, shared by the xdist workers and every process
# they start (main, the notebook kernel, multi-host workers): most tests train the same tiny
# configs, and compiling them again in each test was most of the suite's time on 2 cores.
# The pytest process (the xdist controller) makes it before the workers start, and they
# inherit the variables; set before jax is imported, as jax reads them then. A cache hit
# loads the executable XLA would have compiled, so no result changes.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="samplecnn_jax_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

from samplecnn_jax import config_base, models  # noqa: E402


def pytest_unconfigure(config):
  """The session's compilation cache goes with the session (the process that made it)."""
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_config(name: str, arg: str | None = None):
  """Loads `configs/<name>.py` the way `--config=configs/<name>.py:arg` does."""
  return config_base.load_config(f"{REPO / 'configs' / name}.py" + (f":{arg}" if arg else ""))


def tiny_config(data_dir: str, **overrides):
  """configs/test.py on the store at `data_dir`, with top-level fields overridden."""
  config = load_config("test")
  config.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def tiny_model(variant="rese2_multi", **overrides):
  """A tiny model (configs/test.py widths), its variables and a batch of 4 waveforms."""
  config = load_config("test", variant)
  for key, value in overrides.items():
    setattr(config.model, key, value)
  model = models.create_model(config.model, config.num_classes)
  x = jax.random.normal(jax.random.key(1), (4, config.input_size))
  variables = model.init(jax.random.key(0), x, train=False)
  return model, variables, x


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> str:
  """A small demo store (48/12/12 clips): enough for a few steps and a quick evaluation.

  Module-scoped: each test module prepares its own; a module may define its own size.
  """
  from samplecnn_jax import prepare

  out = tmp_path_factory.mktemp("demo")
  prepare.prepare("demo", None, out, workers=1, num_train=48, num_valid=12, num_test=12)
  return str(out)


@pytest.fixture
def shared_data() -> Path:
  """The real dataset excerpts beside the repository; skips when they are not there."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real dataset excerpts not found at {SHARED_DATA}")
  return SHARED_DATA
