"""Local multi-process launcher: N trainer processes joined on 127.0.0.1, each with fake CPU devices.

This stands in for the 4 hosts of a v4-32 slice in tests and demos: each child runs the same
``sawt train`` command with ``SAWT_COORDINATOR``, ``SAWT_NUM_PROCESSES`` and ``SAWT_PROCESS_ID`` set, and
`trainer.distributed.init_distributed` joins them with `jax.distributed.initialize`. The launcher forwards
SIGTERM to every child, and once one child fails it gives the others a grace period (their heartbeat
timeout makes them exit on their own) before killing them, so a dead peer never leaves a hang.

The children are not pinned to cores: each may run on every core the launcher may use. Pinning each to
its own share (C/N cores, 418b645) was meant to budget XLA's thread pools, but it made the 2-process demo on
2 cores slower, not faster: the gloo TCP loop thread that carries the cross-process collectives then competes
with its own process's compute thread on one core (step-pace probe, 60 demo steps: 1.28-1.35 s/step pinned
at load 1.7-4.4, 0.76 s/step unpinned at load 4.0, system time per step 1.24 s against 0.59 s; docs/training.md).
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
    for i in range(n):
        env = dict(
            os.environ,
            SAWT_COORDINATOR=f"127.0.0.1:{port}",
            SAWT_NUM_PROCESSES=str(n),
            SAWT_PROCESS_ID=str(i),
            JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
        )
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "sawt.cli", "train", *argv, "--cpu-devices", str(cpu_devices)], env=env
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
