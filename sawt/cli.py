"""The `sawt` command: one entry point whose subcommands live in `sawt.commands`.

Each module in `sawt.commands` defines ``register(subparsers)`` and imports nothing heavy at module level,
so that ``sawt --help`` answers at once; the work is imported inside each handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from core.errors import ConfigError, UsageError

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
