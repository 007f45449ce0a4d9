"""Local multi-process launcher: N trainer processes joined on 127.0.0.1, each with fake CPU devices.

This stands in for the 4 hosts of a v4-32 slice in tests and demos: each child runs the same
``sawt train`` command with ``SAWT_COORDINATOR``, ``SAWT_NUM_PROCESSES`` and ``SAWT_PROCESS_ID`` set, and
`trainer.distributed.init_distributed` joins them with `jax.distributed.initialize`. The launcher forwards
SIGTERM to every child, and once one child fails it gives the others a grace period (their heartbeat
timeout makes them exit on their own) before killing them, so a dead peer never leaves a hang.

Each child gets its own share of the CPU cores (`core_shares`): N processes on C cores each run on C/N of
them. XLA sizes its CPU thread pools from the process's affinity, so this is the per-process thread budget:
without it, two processes on two cores each started two compute threads (plus Grain's loader threads)
that preempted one another, and the demo's system time equalled its user time (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from trainer.preemption import EXIT_PREEMPTED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def combine_exit_codes(codes: Sequence[int]) -> int:
    """0 if all succeeded; 42 if the only failures are preemptions; else the first other failure."""
    failures = [c for c in codes if c != 0]
    if not failures:
        return 0
    others = [c for c in failures if c != EXIT_PREEMPTED]
    return others[0] if others else EXIT_PREEMPTED


def core_shares(n: int, cores: Sequence[int]) -> list[set[int]]:
    """Disjoint, equal slices of ``cores`` for ``n`` processes; round-robin single cores if n > len(cores)."""
    cores = sorted(cores)
    if n <= len(cores):
        per = len(cores) // n
        return [set(cores[i * per : (i + 1) * per]) for i in range(n)]
    return [{cores[i % len(cores)]} for i in range(n)]


def launch_local(n: int, argv: Sequence[str], cpu_devices: int, peer_grace_seconds: float = 60.0) -> int:
    """Runs ``sawt train ARGV`` as ``n`` joined processes and returns the combined exit code.

    Args:
        n: number of processes.
        argv: the ``sawt train`` arguments for each child (without --local-processes).
        cpu_devices: fake CPU devices per process.
        peer_grace_seconds: after the first failure, how long the others may take to exit by themselves.
    """
    port = free_port()
    children: list[subprocess.Popen[bytes]] = []
    shares = core_shares(n, os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else None
    for i in range(n):
        env = dict(
            os.environ,
            SAWT_COORDINATOR=f"127.0.0.1:{port}",
            SAWT_NUM_PROCESSES=str(n),
            SAWT_PROCESS_ID=str(i),
            JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
        )
        # Pinned before exec, so every thread the child starts (XLA's pools included) stays on its share.
        pin = None if shares is None else (lambda cpus=shares[i]: os.sched_setaffinity(0, cpus))
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "sawt.cli", "train", *argv, "--cpu-devices", str(cpu_devices)],
                env=env,
                preexec_fn=pin,
            )
        )

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        failed_at: float | None = None
        while any(c.poll() is None for c in children):
            codes = [c.poll() for c in children]
            if failed_at is None and any(code not in (None, 0) for code in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > peer_grace_seconds:
                for child in children:
                    if child.poll() is None:
                        print(
                            f"launcher: killing process {children.index(child)} (peer failed)",
                            file=sys.stderr,
                        )
                        child.kill()
            time.sleep(0.2)
    except KeyboardInterrupt:
        forward(signal.SIGTERM, None)
        for child in children:
            child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return combine_exit_codes([c.wait() for c in children])
