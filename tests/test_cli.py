"""The `sawt` command: every subcommand answers --help."""

import subprocess
import sys

import pytest

from sawt.cli import build_parser


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


@pytest.mark.parametrize("path", list(_subcommand_paths(build_parser())), ids=" ".join)
def test_help_of_every_subcommand(path):
    out = subprocess.run(
        [sys.executable, "-m", "sawt", *path, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "usage: sawt" in out.stdout


def test_overrides_stand_anywhere_among_the_flags():
    """`key=value` on both sides of a flag reaches the config, in the order given (the later one wins)."""
    from sawt.cli import parse_args
    from trainer.config import load_experiment

    argv = [
        "train",
        "--config",
        "tiny",
        "train.steps=24",
        "--run-dir",
        "R",
        "metrics.port=9400",
        "train.steps=7",
    ]
    args = parse_args(build_parser(), argv)
    assert args.run_dir == "R"
    assert args.overrides == ["train.steps=24", "metrics.port=9400", "train.steps=7"]
    cfg = load_experiment(args.config, args.overrides)
    assert (cfg.train.steps, cfg.metrics.port) == (7, 9400)
    plan = parse_args(
        build_parser(), ["plan", "a.b=1", "--config", "tiny", "c=2", "--topology", "v4-8", "d=3"]
    )
    assert plan.overrides == ["a.b=1", "c=2", "d=3"] and plan.topology == "v4-8"


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["train", "--config", "tiny", "--bogus", "a=1"], "--bogus"),
        (["data", "inspect", "DIR", "a=1"], "a=1"),  # a command without overrides takes none
        (["deploy", "render", "train", "tpu.type=v6e"], "tpu.type=v6e"),  # deploy's overrides are --set
    ],
)
def test_words_that_are_no_override_or_flag_are_still_refused(argv, unknown, capsys):
    from sawt.cli import parse_args

    with pytest.raises(SystemExit) as err:
        parse_args(build_parser(), argv)
    assert err.value.code == 2
    assert f"unrecognized arguments: {unknown}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--checkpoint", "unused"],
        ["distill", "generate-cot", "--teacher-url", "http://127.0.0.1:9/v1", "--model", "m", "--data", "d",
         "--out", "o"],
    ],
    ids=["serve", "distill"],
)  # fmt: skip
def test_api_key_env_names_a_variable_that_must_be_set(argv, monkeypatch, capsys):
    """The server and the distillation client read --api-key-env the same way (sawt.commands.api_key_from_env):
    a named variable that is unset or empty is a usage error before anything starts."""
    from sawt.cli import main
    from sawt.commands import api_key_from_env

    monkeypatch.delenv("SAWT_TEST_UNSET_KEY", raising=False)
    assert main([*argv, "--api-key-env", "SAWT_TEST_UNSET_KEY"]) == 2
    assert (
        "--api-key-env SAWT_TEST_UNSET_KEY: that environment variable is unset or empty"
        in capsys.readouterr().err
    )
    monkeypatch.setenv("SAWT_TEST_UNSET_KEY", "k3y")
    assert (api_key_from_env("SAWT_TEST_UNSET_KEY"), api_key_from_env(None)) == ("k3y", None)
