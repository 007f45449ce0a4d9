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
