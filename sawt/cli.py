"""The `sawt` command: one entry point whose subcommands live in `sawt.commands`.

Each module in `sawt.commands` defines ``register(subparsers)`` and imports nothing heavy at module level,
so that ``sawt --help`` answers at once; the work is imported inside each handler.

A command's ``key=value`` config overrides (`sawt.commands.add_overrides`) may stand anywhere among its
flags, in the order given (`parse_args`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from core.errors import ConfigError, UsageError
from sawt.commands import OVERRIDES_ANYWHERE

# Order is the order shown in `sawt --help`.
COMMAND_MODULES = (
    "data",
    "convert",
    "transcribe",
    "train",
    "plan",
    "serve",
    "batch_infer",
    "distill",
    "deploy",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sawt",
        description="Fine-tune and serve Qwen3-Omni (thinker) for Arabic speech recognition on TPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sawt.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"sawt.commands.{name}":
                raise
            continue  # a command whose module has not landed yet
        module.register(sub)
    return parser


def is_override(arg: str) -> bool:
    """``key=value`` with a dotted key, as `core.configlib` parses it (never a flag)."""
    key, sep, _ = arg.partition("=")
    return bool(sep) and bool(key) and not key.startswith("-") and " " not in key


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, but ``key=value`` overrides may stand on both sides of a flag.

    argparse gives a ``nargs="*"`` positional only its first run of words; the ones after a later flag come
    back unrecognised (``parse_intermixed_args`` would collect them but does not support subcommands).
    Those are appended to the command's ``overrides`` in the order given, so a later one still wins.
    """
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if is_override(a)]
    unknown = [a for a in extra if not is_override(a)]
    if late and not getattr(args, OVERRIDES_ANYWHERE, False):
        unknown = extra
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        result = args.func(args)
    except (UsageError, ConfigError, FileNotFoundError) as err:
        print(f"sawt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sawt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
