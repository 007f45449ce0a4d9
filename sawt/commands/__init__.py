"""Subcommands of `sawt`; each module registers one top-level command (see `sawt.cli`)."""

from __future__ import annotations

import argparse

# The Namespace attribute that marks a command whose bare ``key=value`` words are config overrides.
OVERRIDES_ANYWHERE = "_overrides_anywhere"


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """Adds the command's ``key=value`` config overrides (``args.overrides``), allowed anywhere among its flags.

    argparse alone takes only the first run of them; `sawt.cli.parse_args` collects the ones after a flag.
    """
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)
    parser.set_defaults(**{OVERRIDES_ANYWHERE: True})
