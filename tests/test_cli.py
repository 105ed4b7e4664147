"""Tests for samplecnn_jax.cli: one flag spelling, with the old dashed one as a hidden alias."""

from __future__ import annotations

import pytest
from conftest import REPO

from samplecnn_jax import cli


def _parser():
  parser = cli.FlagParser(prog="tool")
  parser.add_argument("--sample_rate", type=int, default=16000, help="rate")
  parser.add_argument("--split_rule", choices=("paper", "official"), default="paper", help="rule")
  parser.add_argument("--no_progress", action="store_true", help="no bar")
  parser.add_argument("--out", default=None, help="one word: no alias")
  return parser


def test_dashed_spelling_still_works_with_a_note(capsys):
  args = _parser().parse_args(["--sample-rate", "8000", "--split-rule=official", "--no-progress"])
  assert (args.sample_rate, args.split_rule, args.no_progress) == (8000, "official", True)
  assert "--sample-rate is deprecated; use --sample_rate" in capsys.readouterr().err
  defaults = _parser().parse_args([])
  assert (defaults.sample_rate, defaults.split_rule, defaults.no_progress) == (16000, "paper", False)
  with pytest.raises(SystemExit):
    _parser().parse_args(["--split-rule", "other"])  # The alias checks choices too.


def test_help_shows_only_the_underscore_spelling():
  text = _parser().format_help()
  assert "--sample_rate" in text and "--split_rule" in text and "--no_progress" in text
  assert "--sample-rate" not in text and "--no-progress" not in text


@pytest.mark.parametrize("override, expected", [
    ("--config.learning_rat=1", "learning_rate"),
    ("--config.augment.noise_prb=0", "augment.noise_prob"),
    ("--noconfig.model.remmat", "model.remat"),
])
def test_unknown_config_override_names_the_closest_fields(override, expected):
  argv = ["main", f"--config={REPO / 'configs' / 'speech_commands.py'}:small_data", override]
  with pytest.raises(cli.UsageError, match=expected):
    cli.check_config_overrides(argv)
  cli.check_config_overrides(argv[:2] + ["--config.model.remat=true", "--config.augment.gain_db=3"])
