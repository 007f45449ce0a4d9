"""`python -m bench.<suite>`: run one suite module on its own and print (or save) its figures as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_standalone(doc: str, sections: dict[str, Callable[[bool], dict[str, Any]]], argv=None) -> int:
    """Parses ``--quick``/``--json FILE``/``--refuse-loaded``, runs each section and prints the results.

    The run is framed like every `sawt bench` suite (bench/harness.py `bench_run`): machine, load average
    before and after, ``loaded``.
    """
    from bench.harness import bench_run

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--refuse-loaded", action="store_true")
    args = parser.parse_args(argv)
    with bench_run(parser.prog, refuse_loaded=args.refuse_loaded) as results:
        results.update({name: fn(args.quick) for name, fn in sections.items()})
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
