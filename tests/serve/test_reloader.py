"""`sawt serve --reload`'s supervisor, with a trivial child (a Python one-liner), not the JAX server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from inference_server.reloader import snapshot, strip_reload, supervise

# Records its start (one line per start, with its pid) and exits 3 on SIGTERM, so the test can tell a
# forwarded SIGTERM's exit code from any default.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    print("started", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _starts(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("X = 1\n")
    return pkg


def test_strip_reload_and_snapshot(tmp_path):
    assert strip_reload(["serve", "--reload", "--port", "1"]) == ["serve", "--port", "1"]
    pkg = _package(tmp_path)
    (pkg / "notes.txt").write_text("not python")
    assert set(snapshot([pkg])) == {pkg / "__init__.py", pkg / "sub" / "mod.py"}


def test_touching_a_watched_file_restarts_the_child(tmp_path):
    pkg = _package(tmp_path)
    log = tmp_path / "starts.txt"
    stop = threading.Event()
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            code=supervise([sys.executable, "-c", CHILD, str(log)], [pkg], poll_s=0.1, stop=stop)
        )
    )
    thread.start()
    try:
        _wait_for(lambda: len(_starts(log)) == 1)
        first = _starts(log)[0]
        # A new mtime, as skaffold's copy gives the synced file (ns precision: set it explicitly).
        mod = pkg / "sub" / "mod.py"
        mod.write_text("X = 2\n")
        os.utime(mod, ns=(mod.stat().st_atime_ns, mod.stat().st_mtime_ns + 1_000_000_000))
        _wait_for(lambda: len(_starts(log)) == 2)
        _wait_for(lambda: not _alive(first))  # the old child was stopped, not left running
        (pkg / "new.py").write_text("")  # an added file counts too
        _wait_for(lambda: len(_starts(log)) == 3)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert result["code"] == 3  # the last child's SIGTERM exit code
    assert not any(_alive(pid) for pid in _starts(log))


def test_sigterm_to_the_supervisor_ends_both(tmp_path):
    pkg = _package(tmp_path)
    log = tmp_path / "starts.txt"
    runner = (
        "import sys; from pathlib import Path; from inference_server.reloader import supervise; "
        f"sys.exit(supervise([sys.executable, '-c', {CHILD!r}, {str(log)!r}], [Path({str(pkg)!r})], poll_s=0.1))"
    )
    proc = subprocess.Popen([sys.executable, "-c", runner])
    try:
        _wait_for(lambda: len(_starts(log)) == 1)
        child = _starts(log)[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 3  # the child's exit code, passed on
        _wait_for(lambda: not _alive(child))
        assert len(_starts(log)) == 1  # stopped, not restarted
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_child_that_exits_by_itself_ends_supervision(tmp_path):
    code = supervise([sys.executable, "-c", "raise SystemExit(7)"], [_package(tmp_path)], poll_s=0.1)
    assert code == 7
