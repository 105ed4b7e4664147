"""Shared test helpers: tiny configs and models, stores, the real dataset excerpts, and checks
that a printed command line means something.

Configs by name and the checkout's location come from `samplecnn_jax.testing`, which the
benchmarks share; nothing outside tests/ imports this file.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
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
from trained_run import make_run, write_audio_folder  # noqa: E402

from samplecnn_jax import inference, models  # noqa: E402
from samplecnn_jax.testing import REPO, load_config  # noqa: E402


def pytest_unconfigure(config):
  """The session's compilation cache goes with the session (the process that made it)."""
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


SHARED_DATA = REPO.parent / "shared" / "data"


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


# --- What a printed command line means ----------------------------------------------------------

# An option line of a tool's --help: `  --name ...` or `  -h, --help` (argparse), `  --name: ...`
# or `  --[no]name: ...` (absl). Wrapped help text is indented further, so it never matches.
_HELP_OPTION = re.compile(r"^  (?:-\w, )?--(\[no\])?([A-Za-z][\w-]*)", re.MULTILINE)


@functools.cache
def tool_flags(*tool: str) -> frozenset[str]:
  """The long flags (without `--`) that `python TOOL...` defines (`-m MODULE` or a script),
  read from its --help in a subprocess of this interpreter: once per tool and test process."""
  proc = subprocess.run([sys.executable, *tool, "--help"], cwd=REPO, capture_output=True,
                        text=True, timeout=300)  # absl's app.run exits 1 after --help.
  names = set()
  for negatable, name in _HELP_OPTION.findall(proc.stdout):
    names |= {name, "no" + name} if negatable else {name}
  assert names, f"no flags in the --help of {tool}: {proc.stderr[-2000:]}"
  return frozenset(names)


def assert_python_command_parses(words: list[str]) -> None:
  """Asserts what a printed `PYTHON -m MODULE ARGS` or `PYTHON SCRIPT.py ARGS` means, whatever
  its wording: the module or script exists, every `--flag` is one the tool defines, and every
  `--config.FIELD=VALUE` names a field of the configs/ file that its `--config=` names.

  Values and positional arguments are the caller's to check.
  """
  if words[1] == "-m":
    assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"
    tool, args = ("-m", words[2]), words[3:]
  else:
    assert (REPO / words[1]).is_file(), f"no script {words[1]} in {REPO}"
    tool, args = (words[1],), words[2:]
  defined = tool_flags(*tool)
  config_file, overrides = None, []
  for arg in args:
    if not arg.startswith("--"):
      continue
    name, _, value = arg[2:].partition("=")
    if name.startswith("config."):
      overrides.append(name.removeprefix("config."))
      continue
    assert name in defined, f"{arg}: `{' '.join(words[:3])}` defines no --{name}"
    if name == "config":
      config_file = value
  if overrides:
    assert config_file, f"--config.FIELD overrides without --config= in {words}"
    path, _, config_arg = config_file.partition(":")
    assert Path(path).parent == Path("configs") and (REPO / path).is_file(), path
    config = load_config(Path(path).stem, config_arg or None)
    for field in overrides:
      node = config
      for part in field.split("."):
        assert part in node, f"--config.{field}: {path} has no field {field!r}"
        node = node[part]


# --- An untrained run and a folder of audio files (test_inference.py, test_predict.py) --------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir as training leaves it (`trained_run.make_run`), one per test module."""
  return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def predictor(run):
  return inference.Predictor.from_workdir(run["workdir"])


@pytest.fixture(scope="module")
def audio_dir(run):
  return write_audio_folder(run["root"] / "audio")


def one_error_line(stderr: str, prog: str) -> str:
  """The one line a command prints for a usage or configuration error (`cli.report`): asserts
  there is exactly one line and that it is `PROG: error: ...` (no traceback); returns it."""
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
  return lines[0]
