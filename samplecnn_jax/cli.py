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
