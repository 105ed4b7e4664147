"""The flag convention of the command-line tools: `--snake_case`, as absl spells them.

`main` and `visualize` use absl flags (`--config.model.base_width`, `--workdir`); `prepare`
and `predict` use argparse through `FlagParser`, so every tool spells a multi-word flag
with underscores (`--sample_rate`, `--split_rule`, `--top_k`). The dashed spelling that
prepare and predict used before (`--sample-rate`) still works, hidden from `--help`, and
prints a note naming the new spelling. `parse_absl` is the one absl parse of the tools that
run without `absl.app` (baseline, visualize), so they report bad flags alike.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


class _DeprecatedSpelling(argparse.Action):
  """A hidden alias of another flag: notes the new spelling, then does what that flag does."""

  def __init__(self, option_strings, dest, target: argparse.Action, **kwargs):
    super().__init__(option_strings, dest, **kwargs)
    self.target = target

  def __call__(self, parser, namespace, values, option_string=None):
    new = self.target.option_strings[0]
    print(f"{parser.prog}: {option_string} is deprecated; use {new}", file=sys.stderr)
    self.target(parser, namespace, values, new)


class FlagParser(argparse.ArgumentParser):
  """`argparse.ArgumentParser` that also accepts `--a-b` for each flag spelt `--a_b`.

  Sub-parsers (`add_subparsers().add_parser`) are FlagParsers too, so a dataset module's
  `add_arguments(parser)` gets the aliases without knowing about them.
  """

  def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
    action = super().add_argument(*names, **kwargs)
    dashed = [n.replace("_", "-") for n in names if n.startswith("--") and "_" in n]
    if dashed:
      if action.required:
        raise ValueError(f"{names[0]}: a required flag cannot have a deprecated spelling.")
      super().add_argument(
          *dashed, action=_DeprecatedSpelling, target=action, dest=action.dest,
          nargs=action.nargs, type=action.type, choices=action.choices, metavar=action.metavar,
          default=argparse.SUPPRESS, help=argparse.SUPPRESS,
      )
    return action


def parse_absl(define_flags: Any, argv: list[str]) -> Any | None:
  """Parses `argv` with a fresh absl FlagValues that `define_flags(flag_values)` fills.

  Returns the parsed FlagValues, or None after printing the help for -h/--help. Bad flags
  and stray arguments exit with a message (SystemExit), not a traceback.
  """
  from absl import flags

  flag_values = flags.FlagValues()
  define_flags(flag_values)
  if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
    print(flag_values.get_help())
    return None
  try:
    rest = flag_values(argv)
  except flags.Error as error:
    raise SystemExit(f"{error}\nRun with --help for the flags.") from None
  if len(rest) > 1:
    raise SystemExit(f"Unexpected arguments: {rest[1:]}")
  return flag_values


def check_config_overrides(argv: list[str], flag: str = "config") -> None:
  """Exits with the closest valid names when `--config.FIELD=...` names no field of the config.

  ml_collections reports an unknown override as a bare `AttributeError: "'nope'"`
  traceback; this loads the config file named by `--config=PATH[:ARG]` first and checks
  every override's dotted path against it, before anything runs.
  """
  import difflib
  import importlib.util

  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  overrides = []
  for arg in argv[1:]:
    for prefix in (f"--{flag}.", f"--no{flag}."):
      if arg.startswith(prefix):
        overrides.append(arg[len(prefix):].split("=", 1)[0])
  if not overrides or not config_arg:
    return
  path, _, config_argument = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_config_for_checking", path)
  if spec is None or spec.loader is None:
    return  # absl reports a missing config file itself.
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config(*([config_argument] if config_argument else []))
  except Exception:  # noqa: BLE001 -- absl's own loading reports the real error.
    return
  fields = sorted(_dotted_fields(config))
  for name in overrides:
    if name in fields or any(f.startswith(name + ".") for f in fields):
      continue
    close = (difflib.get_close_matches(name, fields, n=5, cutoff=0.6)
             or difflib.get_close_matches(name, fields, n=3, cutoff=0.0))
    hint = f" Closest valid names: {', '.join(close)}."
    raise SystemExit(
        f"--{flag}.{name}: {path} has no field {name!r}.{hint} Every field is listed, with "
        f"a comment, in {path} and samplecnn_jax/config_base.py."
    )


def _dotted_fields(config: Any, prefix: str = "") -> list[str]:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if hasattr(value, "items") and not isinstance(value, dict):
      names.extend(_dotted_fields(value, prefix + key + "."))
  return names
