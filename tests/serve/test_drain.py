"""SIGTERM drains: the in-flight request finishes, new connections are refused, the process exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from helpers.serving import free_port, wav_bytes

HERE = Path(__file__).parent


def _wait(url, path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never returned 200")


def test_sigterm_drains_in_flight_requests():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{HERE.parents[1]}:{HERE}"}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_server_main.py"), str(port), "20"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(url, "/ready", proc)
        result = {}

        def long_request():  # 15 words at 0.1 s each
            result["r"] = httpx.post(
                url + "/v1/audio/transcriptions",
                data={"model": "sawt-asr"},
                files={"file": wav_bytes(15.0)},
                timeout=60,
            )

        t = threading.Thread(target=long_request)
        t.start()
        deadline = time.monotonic() + 30
        while "sawt_num_requests_running 1.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: the listening socket is closed, so new requests cannot get in.
        try:
            refused = httpx.get(url + "/ready", timeout=2).status_code == 503
        except httpx.TransportError:
            refused = True
        assert refused
        t.join(60)
        r = result["r"]
        assert r.status_code == 200, r.text
        assert r.json()["text"] == " ".join(f"w{i}" for i in range(15))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
