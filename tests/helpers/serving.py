"""Helpers for tests that talk to a server: a real uvicorn server on a free local port in a thread, WAV bytes,
and a runner that records its prompts."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import soundfile as sf
import uvicorn

from helpers.processes import free_port


@contextlib.contextmanager
def serve_in_thread(
    app, *, wait_ready: bool = True, timeout: float = 120.0, ready_path: str | None = None
) -> Iterator[str]:
    """Runs ``app`` under uvicorn on 127.0.0.1; yields the base URL; stops the server on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    path = ready_path or ("/ready" if wait_ready else "/health")
    while True:
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"server did not become {path[1:]}")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wav_bytes(seconds: float, *, freq: float = 440.0, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class RecordingRunner:
    """A `scheduler.ModelRunner` that answers every prefill with ``stop_id`` at once and keeps each prompt:
    for tests that check what the engine asks the model to prefill, not what the model says."""

    num_slots = 2
    max_seq_len = 4096

    def __init__(self, stop_id: int):
        self.stop_id = stop_id
        self.prefills: list = []

    def prefill(self, slot, prompt):
        self.prefills.append(prompt)
        out = np.zeros(max(16, self.stop_id + 1), np.float32)
        out[self.stop_id] = 1.0
        return out

    def decode(self, tokens_b, active_b):  # never reached: every prefill stops
        raise AssertionError("decode after a stop token")
