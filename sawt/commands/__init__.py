"""Subcommands of `sawt`; each module registers one top-level command (see `sawt.cli`)."""

from __future__ import annotations

import argparse
import os

# The Namespace attribute that marks a command whose bare ``key=value`` words are config overrides.
OVERRIDES_ANYWHERE = "_overrides_anywhere"


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """Adds the command's ``key=value`` config overrides (``args.overrides``), allowed anywhere among its flags.

    argparse alone takes only the first run of them; `sawt.cli.parse_args` collects the ones after a flag.
    """
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)
    parser.set_defaults(**{OVERRIDES_ANYWHERE: True})


def api_key_from_env(variable: str | None) -> str | None:
    """The API key held in environment variable ``variable`` (``--api-key-env``), or None when none is named.

    A secret stays out of the command line and the config files; naming a variable that is unset or empty
    is an error rather than a silently open (server) or unauthenticated (client) connection.

    Raises:
        UsageError: the variable is named but unset or empty.
    """
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        from core.errors import UsageError

        raise UsageError(f"--api-key-env {variable}: that environment variable is unset or empty")
    return key
