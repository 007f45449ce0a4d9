"""`sawt bench`: benchmarks against named peers, measured in the same run (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse

SUITES = {
    "data": "Example decode vs protobuf, log-mel vs WhisperFeatureExtractor, loader clips/s, convert vs cp.",
    "model": "Train tokens/s and greedy decode tokens/s vs HF transformers; conversion peak RSS.",
    "serve": "Server throughput and latency at 1/8/32 clients vs one request at a time; overload shedding.",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="run a benchmark suite and print ratios against its peer",
        description="Run a benchmark suite. Each figure is a ratio against a peer measured in the same run, "
        "so results are comparable across machines. Results go to stdout and, with --json, to a file.",
    )
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, about in SUITES.items():
        suite = suites.add_parser(name, help=about, description=about)
        suite.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
        suite.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
        suite.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"bench.{args.suite}").main(args)
