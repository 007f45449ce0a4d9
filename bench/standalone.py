"""`python -m bench.<suite>`: run one suite module on its own and print (or save) its figures as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_standalone(doc: str, sections: dict[str, Callable[[bool], dict[str, Any]]], argv=None) -> int:
    """Parses ``--quick``/``--json FILE``, runs each section with ``quick`` and prints the results."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    text = json.dumps({name: fn(args.quick) for name, fn in sections.items()}, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
