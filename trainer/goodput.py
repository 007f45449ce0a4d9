"""Goodput and badput of a training run, from its own records (metrics.jsonl), across restarts.

Goodput is the share of the run's wall time spent on training steps that count: step computation whose
result survives. Everything else is badput, by cause:

| cause | what |
|---|---|
| ``startup`` | process start to the first step: imports, joining peers, building the program, initialising |
| ``compile`` | tracing, lowering and XLA compilation (the train step, evaluation, initialisation) |
| ``data_wait`` | steps waiting for their batch |
| ``checkpoint_save`` | blocking time of checkpoint saves |
| ``checkpoint_restore`` | restoring the latest checkpoint on resume |
| ``eval`` | evaluation, its compilation excluded |
| ``restart`` | time lost to restarts: work redone (steps done after the checkpoint the next attempt resumed from) and the time the job was down between an attempt's last record and the next process's start |
| ``idle`` | the rest: time inside an attempt that no record accounts for (logging, a hang before the watchdog fired) |

The sum of goodput and every badput equals the total: the time from the first process's start to the last
record, minus the gaps after a run that ended cleanly (re-running a finished run with more steps is not a
restart). MaxText computes goodput through Cloud Logging; here the run directory is enough, so it works on
any cluster and after the fact (``python -m trainer.goodput RUN_DIR``).

The records it reads, in order (every record has ``time``, unix seconds when it was written):

- ``{"event": "start", "process_start": T}``: a process (an attempt) began; ``T`` is when the OS started it.
- ``{"event": "resume", "step": S, "seconds": R}``: restored checkpoint ``S`` in ``R`` seconds.
- ``{"event": "loop_start", "step": S, "compile_seconds": C}``: the loop starts at step ``S``; ``C``
  seconds of compilation happened during start-up. Steps of earlier attempts after ``S`` are redone.
- step records ``{"step": K, "span_steps": N, "span_seconds": W, "span_data_wait_seconds": D,
  "span_compile_seconds": C}``: the ``N`` steps up to ``K`` (since the previous step record) took ``W``
  seconds, ``D`` of them waiting for data and ``C`` compiling. Records without ``span_*`` keys (older runs)
  count as one step of ``step_seconds``, ``data_wait_seconds`` and ``compile_seconds``.
- ``{"event": "eval", "seconds": E, "compile_seconds": C}`` and ``{"event": "checkpoint", "seconds": B}``.
- ``{"event": "end", "exit_code": X}``: the attempt ended (0: the run is complete).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CAUSES = (
    "startup",
    "compile",
    "data_wait",
    "checkpoint_save",
    "checkpoint_restore",
    "eval",
    "restart",
    "idle",
)


@dataclass(frozen=True)
class Goodput:
    """Where a run's wall time went (seconds)."""

    total_seconds: float
    productive_seconds: float
    badput_seconds: dict[str, float]

    @property
    def ratio(self) -> float:
        """Productive share of the total (0 before anything happened)."""
        return self.productive_seconds / self.total_seconds if self.total_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "goodput_ratio": round(self.ratio, 6),
            "total_seconds": round(self.total_seconds, 3),
            "productive_seconds": round(self.productive_seconds, 3),
            "badput_seconds": {k: round(v, 3) for k, v in self.badput_seconds.items()},
        }


@dataclass
class _Attempt:
    process_start: float
    last_time: float
    loop_start: float | None = None
    accounted: float = 0.0  # seconds after loop_start covered by steps, evals and saves
    restore: float = 0.0
    ended_cleanly: bool = False


@dataclass
class GoodputTracker:
    """Accumulates records one by one (`add`); `report` gives the figures at any point.

    The trainer feeds it every record it writes, after replaying the run's earlier records, so that the
    Prometheus gauges cover every attempt of the run.
    """

    _badput: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0.0))
    _closed_total: float = 0.0  # total seconds of attempts before the current one, gaps included
    _attempt: _Attempt | None = None
    # Productive seconds of the steps done so far, as a step-indexed cumulative sum: `_span_end[i]` is the
    # last step of the i-th step record, `_cum[i]` the productive seconds up to it. `_span_first[i]` is the
    # step before the span's first step.
    _span_first: list[int] = field(default_factory=list)
    _span_end: list[int] = field(default_factory=list)
    _cum: list[float] = field(default_factory=list)

    # ---- input ----------------------------------------------------------------------------------------

    def add(self, record: dict[str, Any]) -> None:
        """Accounts one metrics.jsonl record (see the module docstring for the keys it reads)."""
        now = float(record.get("time", 0.0))
        event = record.get("event")
        if event == "start":
            self._begin(float(record.get("process_start", now)), now)
            return
        if self._attempt is None:  # records of a run older than the start event: begin where they begin
            self._begin(now, now)
        attempt = self._attempt
        assert attempt is not None
        attempt.last_time = max(attempt.last_time, now)
        if event == "resume":
            attempt.restore += float(record.get("seconds", 0.0))
            self._badput["checkpoint_restore"] += float(record.get("seconds", 0.0))
        elif event == "loop_start":
            self._loop_start(
                attempt, now, int(record.get("step", 0)), float(record.get("compile_seconds", 0.0))
            )
        elif event == "eval":
            seconds, compile_s = float(record.get("seconds", 0.0)), float(record.get("compile_seconds", 0.0))
            self._badput["compile"] += compile_s
            self._badput["eval"] += max(0.0, seconds - compile_s)
            attempt.accounted += seconds
        elif event == "checkpoint":
            seconds = float(record.get("seconds", 0.0))
            self._badput["checkpoint_save"] += seconds
            attempt.accounted += seconds
        elif event == "end":
            attempt.ended_cleanly = int(record.get("exit_code", 1)) == 0
        elif event is None and "step" in record:
            self._step(attempt, record)

    def _begin(self, process_start: float, now: float) -> None:
        previous = self._attempt
        if previous is not None:
            self._close(previous)
            if not previous.ended_cleanly:  # the job was down because the attempt died: a restart's cost
                gap = max(0.0, process_start - previous.last_time)
                self._badput["restart"] += gap
                self._closed_total += gap
        self._attempt = _Attempt(process_start=process_start, last_time=max(now, process_start))

    def _loop_start(self, attempt: _Attempt, now: float, step: int, compile_s: float) -> None:
        attempt.loop_start = now
        self._badput["compile"] += compile_s
        startup = now - attempt.process_start - attempt.restore - compile_s
        self._badput["startup"] += max(0.0, startup)
        self._redo_after(step)

    def _redo_after(self, step: int) -> None:
        """Steps after ``step`` done by earlier attempts will be done again: their time becomes badput."""
        if not self._span_end or self._span_end[-1] <= step:
            return
        kept = self._productive_up_to(step)
        self._badput["restart"] += self._cum[-1] - kept
        i = bisect.bisect_right(self._span_end, step)
        del self._span_first[i:], self._span_end[i:], self._cum[i:]
        if self._span_end[-1:] != [step] and step > 0:
            self._span_first.append(self._span_end[-1] if self._span_end else 0)
            self._span_end.append(step)
            self._cum.append(kept)

    def _productive_up_to(self, step: int) -> float:
        i = bisect.bisect_left(self._span_end, step)
        if i == len(self._span_end):
            return self._cum[-1] if self._cum else 0.0
        before = self._cum[i - 1] if i else 0.0
        first, end = self._span_first[i], self._span_end[i]
        if step <= first:
            return before
        return before + (self._cum[i] - before) * (step - first) / (end - first)

    def _step(self, attempt: _Attempt, record: dict[str, Any]) -> None:
        n = int(record.get("span_steps", 1))
        seconds = float(record.get("span_seconds", record.get("step_seconds", 0.0)))
        wait = float(record.get("span_data_wait_seconds", record.get("data_wait_seconds", 0.0)))
        compile_s = float(record.get("span_compile_seconds", record.get("compile_seconds", 0.0)))
        self._badput["data_wait"] += wait
        self._badput["compile"] += compile_s
        attempt.accounted += seconds
        productive = max(0.0, seconds - wait - compile_s)
        step = int(record["step"])
        self._span_first.append(step - n)
        self._span_end.append(step)
        self._cum.append((self._cum[-1] if self._cum else 0.0) + productive)
        if attempt.loop_start is None:  # a run from before loop_start records: its loop began with this span
            attempt.loop_start = float(record.get("time", 0.0)) - seconds
            attempt.process_start = min(attempt.process_start, attempt.loop_start)
            attempt.accounted = seconds

    def _close(self, attempt: _Attempt) -> None:
        """Adds a finished attempt's wall time and its unaccounted remainder."""
        self._closed_total += attempt.last_time - attempt.process_start
        for cause, seconds in self._remainder(attempt).items():
            self._badput[cause] += seconds

    @staticmethod
    def _remainder(attempt: _Attempt) -> dict[str, float]:
        """The part of an attempt no record accounts for: idle once the loop ran, else all start-up."""
        if attempt.loop_start is None:
            return {"startup": max(0.0, attempt.last_time - attempt.process_start - attempt.restore)}
        return {"idle": max(0.0, attempt.last_time - attempt.loop_start - attempt.accounted)}

    # ---- output ---------------------------------------------------------------------------------------

    def report(self, now: float | None = None) -> Goodput:
        """The figures up to ``now`` (default: the last record's time)."""
        badput = dict(self._badput)
        total = self._closed_total
        if self._attempt is not None:
            current = dataclasses.replace(self._attempt, last_time=max(self._attempt.last_time, now or 0.0))
            total += current.last_time - current.process_start
            for cause, seconds in self._remainder(current).items():
                badput[cause] += seconds
        return Goodput(total, self._cum[-1] if self._cum else 0.0, badput)


# The phases of a JAX compilation, reported through jax.monitoring when each ends.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Seconds spent compiling, from JAX's own monitoring events, taken in portions (`take`).

    The trainer puts each portion into the record of the phase it fell in (start-up, a step, an eval), so
    compilation is badput wherever it happens, without guessing from a first step's time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = 0.0

    def install(self) -> CompileClock:
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self._seconds += duration

    def take(self) -> float:
        """Compile seconds since the last `take`."""
        with self._lock:
            seconds, self._seconds = self._seconds, 0.0
        return seconds


class StepSpans:
    """Sums the steps between two step records (``span_*`` keys), so that ``train.log_every`` > 1 loses
    nothing: each step record carries every step since the previous one."""

    def __init__(self, compile_clock: CompileClock):
        self.compile_clock = compile_clock
        self._reset()

    def _reset(self) -> None:
        self.steps, self.seconds, self.data_wait, self.compile = 0, 0.0, 0.0, 0.0

    def add(self, seconds: float, data_wait: float) -> float:
        """Adds one step; returns the seconds it spent compiling."""
        compile_s = self.compile_clock.take()
        self.steps += 1
        self.seconds += seconds
        self.data_wait += data_wait
        self.compile += compile_s
        return compile_s

    def take(self) -> dict[str, Any]:
        """The span's record keys (empty if no step was added since the last `take`)."""
        if not self.steps:
            return {}
        span = {
            "span_steps": self.steps,
            "span_seconds": self.seconds,
            "span_data_wait_seconds": self.data_wait,
            "span_compile_seconds": self.compile,
        }
        self._reset()
        return span


def process_start_time() -> float:
    """Unix time at which the OS started this process (imports included), or now where it cannot tell."""
    import time

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after the comm field
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def goodput_of_records(records: Iterable[dict[str, Any]], now: float | None = None) -> Goodput:
    """`GoodputTracker.report` after adding ``records`` in order."""
    tracker = GoodputTracker()
    for record in records:
        tracker.add(record)
    return tracker.report(now)


def goodput_of_run(run_dir: str | Path) -> Goodput:
    """The goodput of a run directory, from its ``metrics.jsonl``."""
    from core.fileio import read_jsonl

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a training run directory?)")
    return goodput_of_records(read_jsonl(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.goodput",
        description="Goodput and badput by cause of a training run, from RUN_DIR/metrics.jsonl (JSON).",
    )
    parser.add_argument("run_dir", help="the run directory (sawt train --run-dir)")
    args = parser.parse_args(argv)
    try:
        result = goodput_of_run(args.run_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
