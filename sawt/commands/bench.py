"""`sawt bench`: benchmarks against named peers, measured in the same run (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse

SUITES = {
    "data": "Example decode vs protobuf, log-mel vs WhisperFeatureExtractor, loader clips/s, convert vs cp.",
    "model": "Train tokens/s and greedy decode tokens/s vs HF transformers; conversion peak RSS.",
    "pack": "Packed vs bucketed batches: token and frame fill, train-step useful tokens/s, v4-32 epoch hours.",
    "serve": "Server throughput and latency at 1/8/32 clients vs one request at a time; overload shedding.",
    "demo": "The demo's training time (target <= 12 min) and held-out test WER (target <= 0.35), a fresh run.",
}


# Suites whose thread budget is fixed by design, so they take no --threads: data times single-threaded paths
# on one core, ours and the peers alike (bench/data.py THREAD_BUDGET).
FIXED_THREAD_BUDGET = {"data"}


# The benchmarks run from a source checkout: they measure against dev-only peers (tools/dev, the torch
# reference venv) and are not shipped in the wheel (pyproject.toml), so an installed sawt says so instead.
NEEDS_CHECKOUT = (
    "the benchmarks run from a source checkout of sawt (they measure against dev-only peers: tools/dev and "
    "the torch reference venv), and this installation has no bench/ package (the wheel does not ship it): "
    "clone the repository, run `make setup`, then `.venv/bin/sawt bench SUITE` there"
)


def register(sub: argparse._SubParsersAction) -> None:
    try:
        from bench.harness import add_cli_flags
    except ModuleNotFoundError as err:
        if err.name != "bench":
            raise
        _register_without_bench(sub)
        return

    parser = sub.add_parser(
        "bench",
        help="run a benchmark suite and print ratios against its peer",
        description="Run a benchmark suite. Each figure is a ratio against a peer measured in the same run, "
        "both sides interleaved round by round with the same thread budget, reported as medians with "
        "their spread. The JSON records the CPU, the cores and the load average before and after; a run "
        "with a load average above half the cores before it, or with other processes keeping more than "
        'half the cores busy during it, is marked "loaded": true (or refused with --refuse-loaded). '
        "Results go to stdout and, with --json, to a file. Exit code 3: refused, the machine was loaded.",
    )
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, about in SUITES.items():
        suite = suites.add_parser(name, help=about, description=about)
        suite.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
        if name == "demo":  # an absolute time of the real demo: no sizes to shrink, no peer to share threads
            suite.add_argument(
                "--refuse-loaded", action="store_true", help="refuse to run on a loaded machine"
            )
            suite.add_argument(
                "--out",
                default="build/demo",
                help="demo directory (default: build/demo); its run/ and report/ are replaced, the corpus kept",
            )
        else:
            suite.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
            add_cli_flags(suite, threads=name not in FIXED_THREAD_BUDGET)
        suite.set_defaults(func=_run)


def _register_without_bench(sub: argparse._SubParsersAction) -> None:
    """An installed sawt: `sawt bench SUITE ...` parses anything and explains where the benchmarks run."""
    parser = sub.add_parser(
        "bench",
        help="run a benchmark suite (from a source checkout only)",
        description=f"Run a benchmark suite: {NEEDS_CHECKOUT}.",
    )
    parser.add_argument("suite", choices=list(SUITES), metavar="SUITE", help=", ".join(SUITES))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=_needs_checkout)


def _needs_checkout(args: argparse.Namespace) -> int:
    from core.errors import UsageError

    raise UsageError(NEEDS_CHECKOUT)


# Exit code of a run refused because the machine was loaded (--refuse-loaded): retry later.
EXIT_LOADED = 3


def _run(args: argparse.Namespace) -> int:
    import importlib
    import sys

    from bench.harness import LoadedMachineError
    from core.errors import UsageError

    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    try:
        return importlib.import_module(f"bench.{args.suite}").main(args)
    except LoadedMachineError as err:
        print(f"sawt bench {args.suite}: refused: {err}", file=sys.stderr)
        return EXIT_LOADED
