"""Tests for samplecnn_jax.cli: the one convention (absl flags, exit codes 0/1/2, one-line errors)."""

from __future__ import annotations

import pytest
from absl import flags
from conftest import REPO

from samplecnn_jax import cli

PROG = "python -m samplecnn_jax.tool"


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("sample_rate", 16000, "Rate.", flag_values=fv)
  flags.DEFINE_enum("split_rule", "paper", ["paper", "official"], "Rule.", flag_values=fv)
  cli.define_checkpoint(fv)


def _run(capsys, command, *args: str, positional: str | None = None) -> tuple[int, str, str]:
  code = cli.run(PROG, _define, command, [PROG, *args], positional=positional)
  out = capsys.readouterr()
  return code, out.out, out.err


def test_flags_and_positional_arguments_reach_the_command(capsys):
  seen = {}

  def command(fv, rest):
    seen.update(rate=fv.sample_rate, rule=fv.split_rule, checkpoint=fv.checkpoint, rest=rest)
    return cli.EXIT_SOME_FAILED

  code, _, _ = _run(capsys, command, "a.wav", "--sample_rate", "8000", "--split_rule=official",
                    "b.wav", "--checkpoint=latest", positional="FILE")
  assert code == cli.EXIT_SOME_FAILED
  assert seen == {"rate": 8000, "rule": "official", "checkpoint": "latest",
                  "rest": ["a.wav", "b.wav"]}
  assert _run(capsys, lambda fv, rest: None)[0] == cli.EXIT_DONE


@pytest.mark.parametrize("args, message", [
    (["--sample_rat=3"], "Unknown command line flag 'sample_rat'"),
    (["--split_rule=other"], "split_rule"),
    (["--checkpoint=newest"], "one of <best|latest>"),
    (["--sample-rate=3"], "Unknown command line flag 'sample-rate'"),  # One spelling.
    (["stray"], "unexpected arguments ['stray']"),
])
def test_flag_mistakes_are_one_line_and_exit_2(capsys, args, message):
  ran = []
  code, _, err = _run(capsys, lambda fv, rest: ran.append(1), *args)
  assert code == cli.EXIT_USAGE and not ran
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: ") and message in lines[0]


@pytest.mark.parametrize("error", [
    cli.UsageError("--out is required: the folder to write, e.g. --out=prepared/mine"),
    FileNotFoundError("No prepared dataset at x"),
    ValueError("config.learning_rate must be > 0,\ngot -1"),
])
def test_engine_errors_are_one_line_unless_verbose(capsys, error):
  def command(fv, rest):
    raise error

  code, _, err = _run(capsys, command)
  assert code == cli.EXIT_USAGE
  assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and "Traceback" not in err
  assert str(error).splitlines()[0] in err
  with pytest.raises(type(error)):
    _run(capsys, command, "--verbose")


def test_a_bug_is_not_disguised_as_a_usage_error(capsys):
  def command(fv, rest):
    raise RuntimeError("a bug")

  with pytest.raises(RuntimeError, match="a bug"):
    _run(capsys, command)


def test_help_lists_the_flags_and_runs_nothing(capsys):
  ran = []
  code, out, _ = _run(capsys, lambda fv, rest: ran.append(1), "--help", positional="FILE")
  assert code == cli.EXIT_DONE and not ran
  assert f"usage: {PROG} [flags] FILE" in out
  for name in ("--sample_rate", "--split_rule", "--checkpoint", "--[no]verbose"):
    assert name in out


def test_config_flag_takes_overrides_from_the_given_argv(capsys):
  seen = {}
  config_file = str(REPO / "configs" / "test.py")
  argv = [PROG, f"--config={config_file}:samplecnn", "--config.model.base_width=3"]
  code = cli.run(PROG, lambda fv: cli.define_config(fv, "Config.", argv),
                 lambda fv, rest: seen.update(config=fv.config), argv)
  assert code == cli.EXIT_DONE
  assert seen["config"].model.base_width == 3 and seen["config"].model.variant == "samplecnn"


@pytest.mark.parametrize("spec, message", [
    ("configs/nope.py", "no such config file"),
    ("configs/test.py:resnet", "--config=FILE.py:resnet: 'resnet' is neither a model variant"),
])
def test_config_file_mistakes_are_one_line(capsys, spec, message):
  argv = [PROG, f"--config={REPO / spec}"]
  code = cli.run(PROG, lambda fv: cli.define_config(fv, "Config.", argv),
                 lambda fv, rest: None, argv)
  err = capsys.readouterr().err
  assert code == cli.EXIT_USAGE and err.count("\n") == 1 and message in err


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
