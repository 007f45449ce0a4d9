"""Progress bars for long work: one place that decides how they look and when they are shown."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool | None = None,
) -> tqdm:
    """A tqdm bar on stderr; hidden when stderr is not a terminal unless SAWT_PROGRESS=1.

    Logs from CI and Kubernetes pods stay readable, while an interactive user sees live progress.
    """
    import os

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("SAWT_PROGRESS") == "1")
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr
    )
