"""`sawt serve` on a tiny real checkpoint, over real HTTP, driven by the official `openai` client.

Covers: readiness after warm-up, json/text/verbose_json/srt, streaming (deltas add up to the non-streamed
text), bearer auth from an environment variable, /metrics series, and SIGTERM drain with exit code 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from helpers.serving import free_port, wav_bytes

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SAWT_TEST_KEY": KEY, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "sawt", "serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
        "--max-batch", "4", "--max-new-tokens", "10", "--window-s", "4", "--overlap-s", "1",
        "--api-key-env", "SAWT_TEST_KEY", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    saw_503 = False
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"sawt serve exited {proc.returncode}: {proc.stdout.read()}")
        try:
            code = httpx.get(url + "/ready", timeout=2).status_code
            saw_503 |= code == 503
            if code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.1)
    yield url, proc, saw_503
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_openai_client_end_to_end(server):
    url, _proc, saw_503 = server
    assert saw_503  # /ready answered 503 while loading and compiling
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    audio = wav_bytes(2.5, freq=300.0)
    out = client.audio.transcriptions.create(model="sawt-asr", file=("a.wav", audio, "audio/wav"))
    assert isinstance(out.text, str) and out.usage.output_tokens > 0

    stream = client.audio.transcriptions.create(model="sawt-asr", file=("a.wav", audio), stream=True)
    events = list(stream)
    assert events[-1].type == "transcript.text.done"
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == events[-1].text == out.text  # greedy: streaming and not give the same text

    verbose = client.audio.transcriptions.create(
        model="sawt-asr", file=("long.wav", wav_bytes(9.0, freq=250.0)), response_format="verbose_json"
    )
    assert len(verbose.segments) == 3 and verbose.duration == pytest.approx(9.0)
    assert verbose.segments[-1].end == pytest.approx(9.0)
    srt = client.audio.transcriptions.create(model="sawt-asr", file=("a.wav", audio), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") or out.text == ""

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()

    metrics = httpx.get(url + "/metrics").text
    for name in (
        "sawt_time_to_first_token_seconds_count",
        "sawt_inter_token_latency_seconds_count",
        "sawt_e2e_request_latency_seconds_count",
        "sawt_request_queue_time_seconds_count",
        "sawt_request_prefill_time_seconds_count",
        "sawt_request_decode_time_seconds_count",
        "sawt_num_requests_running",
        "sawt_num_requests_waiting",
        "sawt_kv_cache_usage_ratio",
        "sawt_real_time_factor_count",
    ):
        assert name in metrics, name
    assert 'sawt_request_success_total{finished_reason="length"}' in metrics or (
        'sawt_request_success_total{finished_reason="stop"}' in metrics
    )
    assert "sawt_audio_seconds_total 16.5" in metrics  # 2.5 + 2.5 + 9 + 2.5


def test_sigterm_drains_real_server(server):
    url, proc, _ = server
    result = {}
    sent_half = threading.Event()
    prepared = httpx.Request(
        "POST", url + "/v1/audio/transcriptions", data={"model": "sawt-asr"},
        files={"file": ("a.wav", wav_bytes(3.0))},
    )  # fmt: skip
    body = prepared.read()

    def slow_body():  # the request is in flight (half uploaded) when SIGTERM arrives
        yield body[: len(body) // 2]
        sent_half.set()
        time.sleep(1.0)
        yield body[len(body) // 2 :]

    def request():
        result["r"] = httpx.post(
            url + "/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {KEY}", "content-type": prepared.headers["content-type"]},
            content=slow_body(),
            timeout=120,
        )

    t = threading.Thread(target=request)
    t.start()
    assert sent_half.wait(30)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert result["r"].status_code == 200, result["r"].text
    assert proc.wait(60) == 0
