"""`sawt bench data`: the data pipeline's figures, each against a peer measured in the same run.

- ``example_decode_speedup``: our `tf.train.Example` decode vs protobuf (bench/codec.py);
- ``convert_vs_cp_ratio``: `sawt data convert` vs ``cp -r`` of the same bytes (bench/codec.py);
- ``logmel_speedup``, ``logmel_max_abs_diff``: our log-mel vs `WhisperFeatureExtractor` (bench/features.py);
- ``loader_clips_per_s_one_core`` (+ ``loader_vs_hf_mel_only``): the whole loader path on ten-second clips,
  one core (bench/features.py).

The headline keys sit at the top level of the JSON; each section's full figures sit under ``sections``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.harness import emit, run_standalone

HEADLINE = (
    "example_decode_speedup",
    "convert_vs_cp_ratio",
    "logmel_speedup",
    "logmel_max_abs_diff",
    "loader_clips_per_s_one_core",
    "loader_vs_hf_mel_only",
)


def _sections() -> list[tuple[str, str, str]]:
    """(section, module, function) in run order."""
    return [
        ("example_decode", "bench.codec", "bench_example_decode"),
        ("convert", "bench.codec", "bench_convert"),
        ("logmel", "bench.features", "bench_logmel"),
        ("loader", "bench.features", "bench_loader"),
    ]


def _resolve(module: str, function: str) -> Callable[[bool], dict[str, Any]] | str:
    """The benchmark function, or a sentence saying why it is not available."""
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return f"{module} is not there yet"
    except AttributeError:
        return f"{module} has no {function}() yet"


# Every timed path of this suite runs on one core by design (ours and the peers alike).
THREAD_BUDGET = {
    "threads": 1,
    "ours": "single-threaded by design (scipy FFT with one worker, no BLAS); the loader pinned to one core",
    "peer": "protobuf single-threaded; HF's extractor in a child with OPENBLAS/OMP/MKL_NUM_THREADS=1; cp",
}


def run(quick: bool, log: Callable[[str], None] = print, refuse_loaded: bool = False) -> dict[str, Any]:
    """Runs every section; returns the headline keys, the sections, the machine and the load."""
    from bench.harness import bench_run

    with bench_run("data", refuse_loaded=refuse_loaded) as results:
        results.update(quick=quick, thread_budget=THREAD_BUDGET, sections={}, missing={})
        _run_sections(quick, log, results)
    return results


def _run_sections(quick: bool, log: Callable[[str], None], results: dict[str, Any]) -> None:
    for section, module, function in _sections():
        bench = _resolve(module, function)
        if isinstance(bench, str):
            log(f"{section}: skipped ({bench})")
            results["missing"][section] = bench
            continue
        start = time.monotonic()
        figures = bench(quick)
        log(f"{section}: done in {time.monotonic() - start:.1f} s")
        results["sections"][section] = figures
        for key in HEADLINE:
            if key in figures:
                results[key] = figures[key]


def report(results: dict[str, Any]) -> str:
    """A short human-readable table of the headline figures."""
    lines = [f"{'figure':<32} {'value':>12}", "-" * 45]
    for key in HEADLINE:
        value = results.get(key)
        text = "n/a" if value is None else (f"{value:.3g}" if abs(value) < 1e-2 else f"{value:,.2f}")
        lines.append(f"{key:<32} {text:>12}")
    for section, why in results["missing"].items():
        lines.append(f"({section}: {why})")
    lines.append(
        f"load average {results['load_average_before']:.2f} before, {results['load_average_after']:.2f} "
        f"after (limit {results['load_average_limit']:g}): loaded={results['loaded']}"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Entry point of `sawt bench data` (``args.quick``, ``args.json``)."""
    results = run(
        bool(getattr(args, "quick", False)), refuse_loaded=bool(getattr(args, "refuse_loaded", False))
    )
    return emit(results, report(results), getattr(args, "json", None))


if __name__ == "__main__":
    sys.exit(run_standalone(main, __doc__, threads=False))
