"""`sawt bench demo`: the demo's training time and WER, framed like every suite (machine, load before/after).

Runs `python -m tools.demo --out OUT` (what `make demo` runs) in a child process, with a fresh run directory
(`OUT/run` is deleted first, so the training starts from step 0 instead of resuming; the synthesised corpus is
kept and reused). Reports `make demo`'s summary.json figures (`wer_before`, `wer_after`, `train_seconds`),
the child's user and system CPU seconds, and whether the targets hold: training <= 12 min (`TRAIN_SECONDS_
TARGET`) and held-out test WER <= 35% (`WER_TARGET`). A time taken on a loaded machine is marked `loaded`.

There is no peer: the figure is an absolute time on this machine, so only a quiet run counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TRAIN_SECONDS_TARGET = 12 * 60
WER_TARGET = 0.35

THREAD_BUDGET = {
    "threads": "all usable cores",
    "ours": "the demo's 2 local training processes, unpinned (trainer/launch.py)",
    "peer": "none (absolute time)",
}


def run_demo(out: Path, python: str = sys.executable) -> dict[str, Any]:
    """Runs the demo into ``out`` with a fresh run dir; returns its summary plus the child's CPU seconds."""
    shutil.rmtree(out / "run", ignore_errors=True)
    shutil.rmtree(out / "report", ignore_errors=True)
    proc = subprocess.Popen([python, "-m", "tools.demo", "--out", str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"the demo exited with code {code}")
    summary = json.loads((out / "report" / "summary.json").read_text())
    return {
        "wer_before": summary["wer_before"],
        "wer_after": summary["wer_after"],
        "train_seconds": summary["train_seconds"],
        "demo_user_cpu_s": usage.ru_utime,
        "demo_system_cpu_s": usage.ru_stime,
        "summary": str(out / "report" / "summary.json"),
    }


def targets(figures: dict[str, Any]) -> dict[str, bool]:
    return {
        "train_seconds_within_target": figures["train_seconds"] <= TRAIN_SECONDS_TARGET,
        "wer_after_within_target": figures["wer_after"] <= WER_TARGET,
    }


def main(args: argparse.Namespace) -> int:
    from bench.harness import bench_run, emit

    out = Path(getattr(args, "out", None) or "build/demo")
    with bench_run("demo", refuse_loaded=bool(getattr(args, "refuse_loaded", False))) as results:
        results.update(thread_budget=THREAD_BUDGET, out=str(out))
        figures = run_demo(out)
        results.update(figures)
        results.update(targets(figures))
    report = (
        f"demo: training {results['train_seconds'] / 60:.1f} min (target <= {TRAIN_SECONDS_TARGET / 60:g}), "
        f"test WER {100 * results['wer_before']:.1f}% -> {100 * results['wer_after']:.1f}% (target <= "
        f"{100 * WER_TARGET:g}%); CPU user {results['demo_user_cpu_s']:.0f} s, system "
        f"{results['demo_system_cpu_s']:.0f} s; load average {results['load_average_before']:.2f} before, "
        f"{results['load_average_after']:.2f} after: loaded={results['loaded']}"
    )
    return emit(results, report, getattr(args, "json", None))
