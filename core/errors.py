"""The errors that the `sawt` command prints as one line, without a traceback, and exits with code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


class ConfigError(ValueError):
    """A configuration could not be loaded; the message names the key or file at fault."""
