"""The one command-line convention of the tools: absl flags, exit codes 0 / 1 / 2, one-line errors.

Every tool (`main`, `prepare`, `predict`, `visualize`, `baseline`) is an engine (a module a
notebook imports) plus a thin command whose `main(argv=None) -> int` is

  def main(argv=None):
    return cli.run("python -m samplecnn_jax.TOOL", _define_flags, _command, argv)

so that all of them share:
- one parser family, absl, on a private `FlagValues` (a tool runs in-process, in tests and
  notebooks, as often as needed), one spelling (`--snake_case`, `--flag=value` or
  `--flag value`), `--help`, and `--verbose` (tracebacks instead of one-line errors);
- exit codes: 0 done, 1 some inputs failed (the others were processed and reported), 2 usage
  or configuration error (nothing was done), 3 training stopped by SIGTERM/SIGINT after
  saving its latest checkpoint (not finished: rerun the same command to resume);
- every user mistake answered in one line, `PROG: error: WHAT. FIX`, on stderr.

This module knows no engine (it loads config files through `config_base`); engines raise `UsageError` (or `ValueError` / `OSError`, which
the commands report the same way) and never exit.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import flags

EXIT_DONE = 0  # Everything asked for was done.
EXIT_SOME_FAILED = 1  # Some inputs failed (reported); the rest was done.
EXIT_USAGE = 2  # A usage or configuration error: nothing was done.
EXIT_PREEMPTED = 3  # Stopped by SIGTERM/SIGINT after saving: not finished, rerun to resume.

CHECKPOINTS = ("best", "latest")  # The checkpoints of a workdir a reader can ask for.


class UsageError(Exception):
  """A user mistake. Its message is one line: what was wrong, then the flag or command that
  fixes it."""


# Errors a command reports in one line (exit 2) unless --verbose: user mistakes, and the
# engines' errors about their inputs (missing files, bad values, damaged checkpoints).
USER_ERRORS = (UsageError, OSError, ValueError)


def run(
    prog: str,
    define_flags: Callable[[flags.FlagValues], Any],
    command: Callable[[flags.FlagValues, list[str]], int | None],
    argv: Sequence[str] | None = None,
    *,
    positional: str | None = None,
) -> int:
  """Parses `argv` (argv[0] is the program) and runs `command(flag_values, positional_args)`.

  `define_flags(flag_values)` defines the tool's flags; `positional` names the positional
  arguments in messages (e.g. "FILE_OR_FOLDER"), and None rejects any. Returns the exit code:
  `command`'s return value (None is 0), or 2 after printing one line for a flag error or a
  `USER_ERRORS` exception (re-raised with `--verbose`).
  """
  argv = list(sys.argv if argv is None else argv)
  flag_values = flags.FlagValues()
  flags.DEFINE_bool("verbose", False, "Show the traceback of an error, not one line.",
                    flag_values=flag_values)
  define_flags(flag_values)
  if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
    usage = f"usage: {prog} [flags]" + (f" {positional} [...]" if positional else "")
    print(f"{usage}\n\n{flag_values.get_help()}")
    return EXIT_DONE
  try:
    check_config_file(argv)
    check_config_overrides(argv)
    rest = flag_values(argv)[1:]
  except UsageError as error:
    return report(prog, error)
  except flags.Error as error:
    if "Traceback (most recent call last)" in str(error):  # A config file's get_config raised.
      return report(prog, _raised_by_config(error))
    return report(prog, f"{_first_line(error)}. Run `{prog} --help` for the flags")
  except Exception as error:  # noqa: BLE001 -- a config file that fails to load.
    if "--verbose" in argv:
      raise
    return report(prog, error)
  if rest and positional is None:
    return report(prog, f"unexpected arguments {rest}: every input is a --flag=value. "
                   f"Run `{prog} --help` for the flags.")
  try:
    code = command(flag_values, rest)
  except USER_ERRORS as error:
    if flag_values["verbose"].value:
      raise
    return report(prog, error)
  return EXIT_DONE if code is None else int(code)


def _first_line(error: BaseException) -> str:
  """The message of an error, as one line (KeyError's quotes dropped)."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else error
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  return " ".join(lines) or type(error).__name__


def _raised_by_config(error: flags.Error) -> str:
  """`--config=SPEC: MESSAGE` from absl's wrapping of an exception raised by get_config."""
  last = [line for line in str(error).splitlines() if line.strip()][-1]
  spec = str(error).split(": ", 1)[0].removeprefix("flag ")
  message = last.split(": ", 1)[-1]  # Without the exception's type.
  return message if message.startswith(f"{spec.split('=', 1)[0]}=") else f"{spec}: {message}"


def report(prog: str, error: BaseException | str) -> int:
  """Prints `PROG: error: MESSAGE.` (one line) on stderr; returns `EXIT_USAGE`."""
  message = error if isinstance(error, str) else _first_line(error)
  print(f"{prog}: error: {message.rstrip('.')}.", file=sys.stderr)
  return EXIT_USAGE


def define_checkpoint(flag_values: flags.FlagValues, default: str = "best") -> None:
  """`--checkpoint=best|latest`: which checkpoint of a workdir a reader loads."""
  flags.DEFINE_enum("checkpoint", default, list(CHECKPOINTS),
                    "Checkpoint of the workdir to load: best (by validation) or latest.",
                    flag_values=flag_values)


def define_config(flag_values: flags.FlagValues, help_text: str, argv: Sequence[str],
                  config: Any = None) -> None:
  """`--config=FILE.py[:ARG]` with `--config.FIELD=VALUE` overrides (ml_collections).

  ml_collections finds the overrides in `argv` (the arguments `run` will parse; by default
  it would look at `sys.argv`). With `config` given, the flag starts from that ConfigDict
  instead of a file (e.g. the config a workdir recorded), open to the same overrides.
  """
  from ml_collections import config_flags

  if config is None:
    config_flags.DEFINE_config_file("config", None, help_text, flag_values=flag_values,
                                    lock_config=True, sys_argv=list(argv))
  else:
    config_flags.DEFINE_config_dict("config", config, help_text, flag_values=flag_values,
                                    lock_config=True, sys_argv=list(argv))


def check_config_file(argv: Sequence[str], flag: str = "config") -> None:
  """Raises `UsageError` when `--config=FILE.py[:ARG]` names a file that does not exist."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  path = Path((spec or "").partition(":")[0])
  if spec and path.suffix == ".py" and not path.is_file():
    configs = Path(__file__).resolve().parent.parent / "configs"
    names = ", ".join(sorted(p.name for p in configs.glob("*.py"))) if configs.is_dir() else ""
    found = f" (the project's configs: {configs}/ {names})" if names else ""
    raise UsageError(f"--{flag}={spec}: no such config file{found}")


def check_config_overrides(argv: Sequence[str], flag: str = "config", *, config: Any = None,
                           source: str | None = None) -> None:
  """Raises `UsageError` with the closest valid names when `--config.FIELD=...` names no field.

  ml_collections reports an unknown override as a bare `AttributeError: "'nope'"`
  traceback; this checks every override's dotted path against `config` (named `source` in
  the message) or, by default, the config file named by `--config=PATH[:ARG]`, before
  anything runs.
  """
  overrides = []
  for arg in argv[1:]:
    for prefix in (f"--{flag}.", f"--no{flag}."):
      if arg.startswith(prefix):
        overrides.append(arg[len(prefix):].split("=", 1)[0])
  if not overrides:
    return
  if config is None:
    source = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
    if not source:
      return
    from samplecnn_jax import config_base  # Imports the models (JAX); `predict --model` does not.

    try:
      config = config_base.load_config(source)
    except Exception:  # noqa: BLE001 -- the config flag's own loading reports the real error.
      return
  fields = sorted(_dotted_fields(config))
  for name in overrides:
    if name in fields or any(f.startswith(name + ".") for f in fields):
      continue
    close = (difflib.get_close_matches(name, fields, n=5, cutoff=0.6)
             or difflib.get_close_matches(name, fields, n=3, cutoff=0.0))
    raise UsageError(
        f"--{flag}.{name}: {source} has no field {name!r}. Closest valid names: "
        f"{', '.join(close)} (every field is listed, with a comment, in "
        "samplecnn_jax/config_base.py and the config files)"
    )


def _dotted_fields(config: Any, prefix: str = "") -> list[str]:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if hasattr(value, "items") and not isinstance(value, dict):
      names.extend(_dotted_fields(value, prefix + key + "."))
  return names

