"""`sawt serve --reload`: a dev-loop supervisor that restarts the server when our Python sources change.

In skaffold's ``dev`` profile, edited ``.py`` files are copied into the running server container over the
installed packages. A running interpreter never re-reads them, so this supervisor runs the real server as a
child process, polls the mtimes of the watched packages' ``.py`` files once a second, and on a change stops
the child with SIGTERM (it drains, as on any SIGTERM) and starts it again. The new child reloads the model
and recompiles, so a restart takes as long as a cold start. Standard library only; off by default.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("sawt.reload")

WATCHED_PACKAGES = ("inference_server", "trainer", "core", "sawt")


def package_dirs(names: Iterable[str] = WATCHED_PACKAGES) -> list[Path]:
    """The directories of the installed packages ``names`` (those not found are skipped)."""
    dirs = []
    for name in names:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(Path(location))
    return dirs


def snapshot(dirs: Iterable[Path]) -> dict[Path, int]:
    """``{path: mtime_ns}`` of every ``.py`` file under ``dirs``; a file added or removed changes it too."""
    mtimes = {}
    for root in dirs:
        for path in root.rglob("*.py"):
            # A file removed between listing and stat is simply absent: the next poll sees it.
            with contextlib.suppress(FileNotFoundError):
                mtimes[path] = path.stat().st_mtime_ns
    return mtimes


def strip_reload(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--reload``: the child runs the server itself."""
    return [arg for arg in argv if arg != "--reload"]


def supervise(
    command: Sequence[str],
    dirs: Sequence[Path],
    *,
    poll_s: float = 1.0,
    stop_timeout_s: float = 60.0,
    stop: threading.Event | None = None,
) -> int:
    """Run ``command``; restart it whenever a ``.py`` file under ``dirs`` changes. Returns its exit code.

    SIGTERM/SIGINT to this process (when called from the main thread) is forwarded to the child; once the
    child exits, so does the supervisor, with the child's code. A child that exits on its own also ends
    supervision (a crash is not hidden behind a restart loop; Kubernetes restarts the pod).

    Args:
        command: the child's argv.
        dirs: directories whose ``.py`` files are watched.
        poll_s: seconds between mtime polls.
        stop_timeout_s: how long a child gets to drain after SIGTERM before it is killed.
        stop: set it to stop supervision as a signal would (for callers not on the main thread).
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    seen = snapshot(dirs)
    starts = 0
    while True:
        starts += 1
        log.info("starting server (start %d): %s", starts, " ".join(command))
        # Its own session: tini (`-g`) signals our process group, and the child must get one SIGTERM (ours),
        # not two; a second SIGTERM during the drain would cut it short.
        child = subprocess.Popen(list(command), start_new_session=True)
        while child.poll() is None and not stop.wait(poll_s):
            now = snapshot(dirs)
            if now != seen:
                changed = sorted(str(p) for p in now.keys() | seen.keys() if now.get(p) != seen.get(p))
                log.info("source changed (%s); restarting the server", ", ".join(changed[:5]))
                seen = now
                break
        if child.poll() is not None:  # exited by itself: pass its code on
            return child.returncode
        code = _terminate(child, stop_timeout_s)
        if stop.is_set():
            return code


def _terminate(child: subprocess.Popen, timeout_s: float) -> int:
    """SIGTERM ``child`` (it drains), wait for it, kill it if it outlasts ``timeout_s``; its exit code."""
    child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("server did not stop within %.0f s; killing it", timeout_s)
        child.kill()
        return child.wait()


def main(argv: Sequence[str]) -> int:
    """Supervise ``python -m sawt.cli <argv minus --reload>`` over the installed watched packages.

    Args:
        argv: the ``sawt`` arguments, e.g. ``["serve", "--checkpoint", "/model", "--reload"]``.
    """
    return supervise([sys.executable, "-m", "sawt.cli", *strip_reload(argv)], package_dirs())
