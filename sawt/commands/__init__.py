"""Subcommands of `sawt`; each module registers one top-level command (see `sawt.cli`)."""
