"""Local processes the tests start: a free port, a real `sawt serve` ready to answer, and a clean stop."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM (a server drains on it), then SIGKILL if it has not exited after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def sawt_serve(
    args: Sequence[str], *, env: Mapping[str, str], cwd: str | Path | None = None, timeout: float = 300.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Runs ``python -m sawt serve ARGS --port P`` as a real process and yields ``(base URL, process)`` once
    ``/ready`` answers 200; stops it on exit (`stop_process`). stdout and stderr stay readable together on
    ``process.stdout`` (after the block, for what the server logged)."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "sawt", "serve", *args, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"sawt serve exited {proc.returncode}: {proc.stdout.read()}"
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        yield url, proc
    finally:
        stop_process(proc)
