"""Hang watchdog: a trainer that stops making progress exits with the restartable code instead of blocking.

On a multi-host slice, one host that hangs (inside a collective, a stuck read of the input, a dead device)
blocks every other host in the next collective, forever: nothing crashes, so nothing restarts. The heartbeat
of `jax.distributed` catches a dead peer, not a live one that hangs. This watchdog is a daemon thread that
expects the loop to report progress; when none comes within the allowance of the current phase, it logs
what the process was doing (the phase, the step, how long, and the Python stack of every thread), records
a ``hang`` event, saves nothing, and exits the process with the restartable exit code, so the JobSet
restarts the job from its last complete checkpoint.

Allowances:

- a step: ``multiple`` x the median of recent step times, at least ``floor_seconds``;
- the start of an attempt up to its first step, and a step that compiles (a batch shape not seen before):
  ``compile_seconds`` (compilation of a large model takes many step times);
- an evaluation or a blocking checkpoint save: ``eval_seconds``.

The loop drives it with `begin` (a phase starts), `step_done` (a step finished: its time feeds the median)
and `stop`. Time and exit are injected, so tests run it on a simulated clock (`poll`).
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

# Steps whose time feeds the median (recent ones: a run's speed changes with its buckets and load).
_HISTORY = 100
# The median needs a few steps that did not compile before it is trusted.
_MIN_HISTORY = 3


@dataclass(frozen=True)
class Allowances:
    """The watchdog's limits, in seconds (see the module docstring)."""

    multiple: float = 10.0
    floor_seconds: float = 600.0
    compile_seconds: float = 1800.0
    eval_seconds: float = 3600.0


class Watchdog:
    """Exits the process when the current phase outlives its allowance.

    Args:
        allowances: the limits.
        exit_code: the code to exit with (the trainer's restartable code).
        on_hang: called with a dict describing the hang before the exit (e.g. to write a record); it gets
            at most ``callback_timeout`` seconds, since it may itself hang on the same stuck resource.
        clock: monotonic seconds.
        exit: ends the process (``os._exit``: the main thread may be blocked in C++, and no clean-up, such
            as a checkpoint save, may run).
        stream: where the report goes.
    """

    def __init__(
        self,
        allowances: Allowances,
        exit_code: int,
        *,
        on_hang: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        exit: Callable[[int], Any] = os._exit,
        stream: TextIO | None = None,
        callback_timeout: float = 10.0,
    ):
        self.allowances = allowances
        self.exit_code = exit_code
        self._on_hang = on_hang
        self._clock = clock
        self._exit = exit
        self._stream = stream
        self._callback_timeout = callback_timeout
        self._lock = threading.Lock()
        self._times: collections.deque[float] = collections.deque(maxlen=_HISTORY)
        self._phase = "startup"
        self._step: int | None = None
        self._since = clock()
        self._allowed = allowances.compile_seconds
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.fired = False

    # ---- what the loop calls -------------------------------------------------------------------------

    def begin(self, phase: str, step: int | None = None, *, compiles: bool = False) -> None:
        """A phase starts: ``step`` (the next train step; ``compiles`` if its batch shape is new), ``eval``
        or ``checkpoint`` (a blocking save)."""
        with self._lock:
            self._phase, self._step, self._since = phase, step, self._clock()
            if phase in ("eval", "checkpoint"):
                self._allowed = self.allowances.eval_seconds
            elif compiles or len(self._times) < _MIN_HISTORY:
                self._allowed = self.allowances.compile_seconds
            else:
                self._allowed = self.step_allowance()

    def step_done(self, seconds: float, *, compiled: bool = False) -> None:
        """A step finished in ``seconds``; steps that compiled do not feed the median."""
        with self._lock:
            if not compiled:
                self._times.append(seconds)
            self._since = self._clock()

    def step_allowance(self) -> float:
        """``multiple`` x the median recent step time, at least ``floor_seconds``."""
        if not self._times:
            return self.allowances.floor_seconds
        return max(self.allowances.floor_seconds, self.allowances.multiple * statistics.median(self._times))

    # ---- the thread ----------------------------------------------------------------------------------

    def start(self) -> Watchdog:
        interval = max(0.05, min(5.0, self.allowances.floor_seconds / 20))
        self._thread = threading.Thread(target=self._run, args=(interval,), name="sawt-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            if self.poll():
                return

    def poll(self) -> bool:
        """Checks the deadline once; on a hang reports, calls ``on_hang``, exits, and returns True."""
        with self._lock:
            waited = self._clock() - self._since
            if waited <= self._allowed or self.fired:
                return False
            self.fired = True
            hang = {
                "phase": self._phase,
                "step": self._step,
                "waited_seconds": round(waited, 3),
                "allowed_seconds": round(self._allowed, 3),
                "median_step_seconds": round(statistics.median(self._times), 6) if self._times else None,
            }
        stream = self._stream or sys.stderr
        where = f"step {hang['step']}" if hang["step"] is not None else "start-up"
        print(
            f"watchdog: no progress in {hang['phase']} ({where}) for {waited:.1f} s, more than the "
            f"{hang['allowed_seconds']:g} s allowed (median step {hang['median_step_seconds']} s); stacks of "
            f"all threads follow; exiting {self.exit_code} without saving (resume uses the last complete "
            "checkpoint)",
            file=stream,
            flush=True,
        )
        stream.write(thread_stacks())
        stream.flush()
        if self._on_hang is not None:
            worker = threading.Thread(target=self._on_hang, args=(hang,), daemon=True)
            worker.start()
            worker.join(self._callback_timeout)
        self._exit(self.exit_code)
        return True


def thread_stacks() -> str:
    """The Python stack of every thread, innermost call last, each headed by the thread's name."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f'--- thread "{names.get(ident, "?")}" ({ident}) ---\n{stack}')
    return "".join(parts)
