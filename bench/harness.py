"""How every `sawt bench` suite measures, so that a ratio measures sawt and not the machine's neighbours.

A ratio taken while other jobs use the cores measures the neighbours: on the shared 2-core sandbox, eager
PyTorch's spinning OpenMP threads lost 40x at a load average of 10 while our compiled step lost 2x, and the
recorded "13x" was the load. So each suite, through this module:

- records the machine (CPU model, cores) and the load average before and after its run
  (`LoadCheck`); a run is marked ``"loaded": true`` with a warning (or refused with ``--refuse-loaded``,
  `LoadedMachineError`) when the load average before it exceeds half the cores, or when the *other*
  processes used more than half the cores during it (`CpuMeter`). The load average after a run counts the
  suite's own busy threads too (a quiet 2-core run ends at ~2), so it is recorded but not judged alone;
- interleaves the two sides (A B A B ..., `interleave`) and reports medians with their spread
  (`Samples.summary`, `ratio`), so that a burst of load hits both sides rather than one;
- gives both sides the same, stated thread budget (`ThreadBudget`): the same CPU cores (affinity, which
  also sizes XLA's CPU thread pools) and the same thread counts for OpenMP / MKL / OpenBLAS and
  ``torch.set_num_threads`` on the peer's side.

`bench_run` ties these together for a suite's ``main``; tests drive every part with a fake clock and a
fake load average (tests/bench/test_harness.py).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A run is "loaded" when the 1-minute load average exceeds this fraction of the machine's cores.
LOADED_FRACTION = 0.5


class LoadedMachineError(RuntimeError):
    """The machine is too busy for a benchmark run and the caller asked to refuse (``--refuse-loaded``)."""


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), or `platform.processor()` where there is none."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_cores() -> int:
    """Cores of the whole machine (what the load average is measured against)."""
    return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, cores (machine / usable by this process), platform and Python version."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine_cores()
    return {
        "cpu_model": cpu_model(),
        "cores": machine_cores(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


# /proc/stat's busy columns (user nice system idle iowait irq softirq steal ...): everything but idle and
# iowait. Steal counts: it is CPU that the hypervisor's other guests took from this machine.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def machine_busy_seconds(stat: str | Path = "/proc/stat") -> float | None:
    """CPU seconds all processes on the machine have been busy since boot, or None without /proc/stat."""
    try:
        first = Path(stat).read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [int(x) for x in first[1:]]
    return sum(ticks[i] for i in _BUSY_COLUMNS if i < len(ticks)) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the HF peer, `sawt train`'s ranks)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class CpuMeter:
    """How many cores the machine's *other* processes kept busy during a run, on average.

    Machine-wide busy CPU time (``/proc/stat``) minus this process tree's own CPU time, over the wall time.
    Unlike the load average after a run, it does not count the suite itself. A child still running at
    `stop` counts as a neighbour (its time is not yet in ``RUSAGE_CHILDREN``), so suites wait for theirs.

    Args:
        machine: machine-wide busy CPU seconds, None where unknown (injected by tests).
        own: this process tree's CPU seconds (injected by tests).
        clock: wall clock in seconds (injected by tests).
    """

    machine: Callable[[], float | None] = machine_busy_seconds
    own: Callable[[], float] = own_cpu_seconds
    clock: Callable[[], float] = time.monotonic
    _start: tuple[float | None, float, float] | None = None
    neighbour_cores: float | None = None
    seconds: float | None = None

    @property
    def started(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        self._start = (self.machine(), self.own(), self.clock())

    def stop(self) -> float | None:
        """The neighbours' average busy cores since `start`, or None where the machine's CPU time is unknown."""
        if self._start is None:
            raise RuntimeError("CpuMeter.stop before start")
        machine0, own0, t0 = self._start
        machine1, own1, t1 = self.machine(), self.own(), self.clock()
        self.seconds = t1 - t0
        if machine0 is None or machine1 is None or t1 <= t0:
            self.neighbour_cores = None
        else:
            self.neighbour_cores = max(0.0, (machine1 - machine0) - (own1 - own0)) / (t1 - t0)
        return self.neighbour_cores


@dataclass
class LoadCheck:
    """Load average before and after a run, and whether the run counts as taken on a loaded machine.

    Args:
        cores: the machine's cores; the limit is ``LOADED_FRACTION * cores``.
        loadavg: returns the 1-minute load average (injected by tests).
        meter: measures the other processes' CPU use during the run; None judges by the load average after
            the run instead (which counts the suite's own threads too).
    """

    cores: int = field(default_factory=machine_cores)
    loadavg: Callable[[], float] = _loadavg
    meter: CpuMeter | None = field(default_factory=CpuMeter)
    before: float | None = None
    after: float | None = None

    @property
    def limit(self) -> float:
        return LOADED_FRACTION * self.cores

    def start(self, refuse: bool = False) -> float:
        """Reads the load before the run; raises `LoadedMachineError` if ``refuse`` and it is over the limit."""
        self.before = float(self.loadavg())
        if refuse and self.before > self.limit:
            raise LoadedMachineError(
                f"load average {self.before:.2f} is above {self.limit:g} (half of {self.cores} cores): "
                "this run would measure the neighbours; retry on a quiet machine or drop --refuse-loaded"
            )
        if self.meter is not None:
            self.meter.start()
        return self.before

    def finish(self) -> float:
        self.after = float(self.loadavg())
        if self.meter is not None and self.meter.started:
            self.meter.stop()
        return self.after

    @property
    def neighbour_cores(self) -> float | None:
        return self.meter.neighbour_cores if self.meter is not None else None

    @property
    def loaded(self) -> bool:
        """True when the load before the run, or the neighbours' CPU use during it, was above the limit.

        Where the neighbours' CPU use is unknown (no meter, no /proc/stat), the load average after the run
        is judged instead, which errs towards "loaded"."""
        during = self.neighbour_cores
        if during is None:
            during = self.after
        return any(x is not None and x > self.limit for x in (self.before, during))

    def fields(self) -> dict[str, Any]:
        """The JSON keys every suite reports: ``load_average_before``, ``load_average_after``, ``loaded``."""
        return {
            "load_average_before": self.before,
            "load_average_after": self.after,
            "load_average_limit": self.limit,
            "neighbour_cores": None if self.neighbour_cores is None else round(self.neighbour_cores, 3),
            "loaded": self.loaded,
        }

    def warning(self) -> str | None:
        if not self.loaded:
            return None
        during = (
            ""
            if self.neighbour_cores is None
            else f", other processes {self.neighbour_cores:.2f} cores during"
        )
        return (
            f"WARNING: loaded machine (load average {self.before:.2f} before, {self.after:.2f} after{during}, "
            f"limit {self.limit:g} for {self.cores} cores): the ratios measure the neighbours too; "
            "re-run on a quiet machine before claiming a target"
        )


@dataclass
class Samples:
    """Seconds of one side's repeated measurements."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, work: float | None = None, unit: str = "per_s") -> dict[str, Any]:
        """Median, min, max and quartiles of the seconds; with ``work``, the rate at the median too.

        ``spread`` is (max - min) / median: how far apart the fastest and slowest rounds were.
        """
        s = sorted(self.seconds)
        q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
        out: dict[str, Any] = {
            "n": len(s),
            "median_s": self.median,
            "min_s": s[0],
            "max_s": s[-1],
            "p25_s": q[0],
            "p75_s": q[2],
            "spread": (s[-1] - s[0]) / self.median if self.median else 0.0,
        }
        if work is not None:
            out[unit] = work / self.median if self.median > 0 else float("inf")
        return out


def interleave(
    sides: Mapping[str, Callable[[], float | None]],
    rounds: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    pause_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Samples]:
    """Runs each side once per round, in turn (A B A B ...), and collects each side's seconds.

    A side's callable either returns None (the harness times it with ``clock``) or returns the seconds it
    measured itself (a peer in another process that times its own work, leaving out the pipe).
    ``pause_s`` sleeps between sides so that one side's lingering threads (OpenMP spins for a while
    after a parallel region) do not run into the next side's time.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    out = {name: Samples() for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            if pause_s:
                sleep(pause_s)
            t0 = clock()
            reported = run()
            elapsed = clock() - t0
            out[name].seconds.append(elapsed if reported is None else float(reported))
    return out


def ratio(peer: Samples, ours: Samples) -> dict[str, float]:
    """Our speed-up over the peer (peer seconds / our seconds): at the medians and over paired rounds.

    Round i of each side ran back to back, so the per-round ratios show how much the load moved the
    figure: ``min``/``max`` bound it.
    """
    per_round = [p / o for p, o in zip(peer.seconds, ours.seconds, strict=True)]
    return {
        "median": peer.median / ours.median,
        "round_median": statistics.median(per_round),
        "min": min(per_round),
        "max": max(per_round),
    }


@dataclass(frozen=True)
class ThreadBudget:
    """The same threads for both sides of a comparison.

    Both sides run on the same ``cpus`` (CPU affinity: XLA sizes its CPU thread pools from it, and a
    peer cannot use more cores than it has) with ``threads`` threads for every OpenMP / MKL / OpenBLAS
    pool, and the PyTorch peer calls ``torch.set_num_threads(threads)``.
    """

    threads: int
    cpus: tuple[int, ...]

    @classmethod
    def for_threads(cls, threads: int | None = None) -> ThreadBudget:
        """``threads`` of this process's cores (all of them by default), lowest-numbered first."""
        usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        n = len(usable) if threads is None else threads
        if not 1 <= n <= len(usable):
            raise ValueError(f"thread budget {n} must be between 1 and the {len(usable)} usable cores")
        return cls(n, tuple(usable[:n]))

    def env(self) -> dict[str, str]:
        """Environment for a child process (the peer) holding the same budget."""
        n = str(self.threads)
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}

    def apply_here(self) -> None:
        """Pins this process to the budget's cores (before JAX creates its CPU client) and sets the env.

        Children inherit the affinity and the environment.
        """
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(self.cpus))
        os.environ.update(self.env())

    def describe(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "cpus": list(self.cpus),
            "ours": f"XLA CPU on {self.threads} core(s) (its thread pools sized by the affinity)",
            "peer": f"torch.set_num_threads({self.threads}), OMP/MKL/OPENBLAS_NUM_THREADS={self.threads}, "
            "same cores",
        }


@contextmanager
def bench_run(
    suite: str,
    *,
    refuse_loaded: bool = False,
    load: LoadCheck | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The frame of one suite's run: yields the results dict and fills in the machine and the load.

    On entry: machine info and the load before (raises `LoadedMachineError` if ``refuse_loaded`` and the
    machine is loaded). On exit: the load after, ``loaded`` and, for a loaded run, a warning printed and
    stored under ``warnings``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    load = load or LoadCheck()
    before = load.start(refuse=refuse_loaded)
    log(f"{suite}: load average {before:.2f} on {load.cores} cores (limit {load.limit:g})")
    results: dict[str, Any] = {"suite": suite, "machine": machine_info(), "warnings": []}
    yield results
    load.finish()
    results.update(load.fields())
    warning = load.warning()
    if warning:
        results["warnings"].append(warning)
        log(warning)


def emit(results: Mapping[str, Any], report: str, json_path: str | Path | None) -> int:
    """Every suite's ending: prints its report and, with ``--json FILE``, writes the figures there atomically
    (a half-written JSON never replaces a good one) and says so. Returns the exit code, 0."""
    print(report)
    if json_path:
        from core.fileio import atomic_write_json

        atomic_write_json(Path(json_path), dict(results))
        print(f"wrote {json_path}")
    return 0


def run_standalone(main: Callable[[Any], int], doc: str, threads: bool = True) -> int:
    """``python -m bench.SUITE`` for a suite with ``--quick``: the flags `sawt bench SUITE` gives it."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    add_cli_flags(parser, threads=threads)
    return main(parser.parse_args())


def add_cli_flags(parser: Any, threads: bool = True) -> None:
    """The flags every suite shares (``sawt bench SUITE`` and ``python -m bench.SUITE``).

    ``threads=False`` for a suite whose budget is fixed by design (data: one core each side), so that
    ``--threads`` is refused there rather than accepted and ignored."""
    parser.add_argument(
        "--refuse-loaded",
        action="store_true",
        help=f"exit with an error instead of measuring when the load average is above "
        f"{LOADED_FRACTION:g} x the cores (default: measure; a run whose load before, or whose other "
        f'processes\' CPU use during it, was above that is marked "loaded": true with a warning)',
    )
    if not threads:
        return
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="thread budget of both sides: N cores and N threads each (default: every usable core)",
    )
