"""Preemption: SIGTERM (a TPU node's maintenance, a JobSet restart) saves a checkpoint and exits 42.

Exit code 42 is the one the JobSet failure policy restarts on (docs/training.md); the local launcher
(trainer/launch.py) combines its processes' codes around it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 42


class Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary (all processes agree on which).

    If no step boundary comes within ``grace_seconds`` (a stuck input, a long evaluation), the process exits
    42 without a new checkpoint rather than wait for the SIGKILL: resume then starts from the previous
    complete checkpoint, which is safe because checkpoints commit atomically.
    """

    def __init__(self, grace_seconds: float = 25.0) -> None:
        self.requested_at: float | None = None
        self.grace_seconds = grace_seconds
        self.saving = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            print("SIGTERM: will save a checkpoint at the next step boundary and exit 42", flush=True)
            timer = threading.Timer(self.grace_seconds, self._expire)
            timer.daemon = True
            timer.start()

    def _expire(self) -> None:
        if not self.saving:
            print(
                f"SIGTERM: no step boundary within {self.grace_seconds:g} s; exiting {EXIT_PREEMPTED} without "
                "a new checkpoint (resume uses the last complete one)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_PREEMPTED)

    def agreed(self) -> bool:
        """True on every process once any process got SIGTERM (a tiny all-gather when multi-process)."""
        flag = np.int32(self.requested_at is not None)
        if jax.process_count() > 1:
            flag = np.max(multihost_utils.process_allgather(flag))
        return bool(flag)
