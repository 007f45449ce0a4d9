"""Routes, formats, limits and auth over real HTTP, with the `FakeEngine` in place of the model.

The engine is faked here only to test the HTTP layer in isolation; the real engine on a tiny checkpoint is
exercised end to end in test_e2e_engine.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from helpers.serving import serve_in_thread, wav_bytes
from prometheus_client import CollectorRegistry

from inference_server.app import build_app
from inference_server.config import ServerConfig
from inference_server.engine import FakeEngine

MODEL = "sawt-asr"


def make_app(engine=None, **overrides):
    config = ServerConfig(model_name=MODEL, **overrides)
    api_key = overrides.pop("api_key", None) if "api_key" in overrides else None
    return build_app(config, engine or FakeEngine(), api_key=api_key, registry=CollectorRegistry())


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(make_app(FakeEngine(max_batch=4, max_queue=8))) as url:
        yield url


def client(url, key="unused"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_openai_client_json_and_formats(server, wav_2s):
    c = client(server)
    out = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s, "audio/wav"))
    assert out.text == "w0 w1"
    assert out.usage.output_tokens == 2
    text = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s), response_format="text")
    assert text.strip() == "w0 w1"
    verbose = c.audio.transcriptions.create(
        model=MODEL,
        file=("a.wav", wav_2s),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert verbose.duration == pytest.approx(2.0)
    assert verbose.segments[0].text == "w0 w1" and verbose.segments[0].end == pytest.approx(2.0)
    srt = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\nw0 w1")
    vtt = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nw0 w1")


def test_openai_client_streaming(server):
    c = client(server)
    stream = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(3.0)), stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas == ["w0", " w1", " w2"]
    assert len(done) == 1 and done[0].text == "w0 w1 w2" and done[0].usage.output_tokens == 3


def test_models_health_ready_metrics(server, wav_2s):
    c = client(server)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    assert httpx.get(server + "/ready").status_code == 200
    c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s))
    text = httpx.get(server + "/metrics").text
    for name in (
        "sawt_time_to_first_token_seconds_bucket",
        "sawt_inter_token_latency_seconds_bucket",
        "sawt_e2e_request_latency_seconds_bucket",
        "sawt_request_queue_time_seconds_bucket",
        "sawt_request_prefill_time_seconds_bucket",
        "sawt_request_decode_time_seconds_bucket",
        "sawt_real_time_factor_bucket",
        "sawt_num_requests_running",
        "sawt_num_requests_waiting",
        "sawt_kv_cache_usage_ratio",
        "sawt_prompt_tokens_total",
        "sawt_generation_tokens_total",
        'sawt_request_success_total{finished_reason="stop"}',
        "sawt_audio_seconds_total",
        'sawt_http_requests_total{code="200",route="/v1/audio/transcriptions"}',
    ):
        assert name in text, name


@pytest.mark.parametrize(
    ("fields", "files", "status", "param"),
    [
        ({"model": MODEL}, {"prompt": (None, "hello")}, 400, "file"),
        ({}, {"file": ("a.wav", wav_bytes(1.0))}, 400, "model"),
        ({"model": "other"}, {"file": ("a.wav", wav_bytes(1.0))}, 404, "model"),
        ({"model": MODEL, "bogus": "1"}, {"file": ("a.wav", wav_bytes(1.0))}, 400, "bogus"),
        ({"model": MODEL, "temperature": "hot"}, {"file": ("a.wav", wav_bytes(1.0))}, 400, "temperature"),
        ({"model": MODEL, "temperature": "7"}, {"file": ("a.wav", wav_bytes(1.0))}, 400, "temperature"),
        (
            {"model": MODEL, "response_format": "xml"},
            {"file": ("a.wav", wav_bytes(1.0))},
            400,
            "response_format",
        ),
        ({"model": MODEL}, {"file": ("a.wav", b"")}, 400, "file"),
        ({"model": MODEL}, {"file": ("a.wav", b"RIFF\x00\x00garbage")}, 400, "file"),
        ({"model": MODEL}, {"file": ("a.wav", wav_bytes(1.0, freq=0.0))}, 400, "file"),  # silent
    ],
)
def test_bad_requests_get_openai_errors(server, fields, files, status, param):
    r = httpx.post(server + "/v1/audio/transcriptions", data=fields, files=files)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param


def test_non_multipart_and_unknown_route(server):
    r = httpx.post(server + "/v1/audio/transcriptions", json={"model": MODEL})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_content_type"
    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server + "/v1/audio/transcriptions")
    assert r.status_code == 405 and "error" in r.json()


def test_body_and_duration_limits(wav_2s):
    app = make_app(max_body_bytes=64 * 1024, max_audio_seconds=1.5)
    with serve_in_thread(app) as url:
        r = httpx.post(
            url + "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": wav_bytes(3.0)}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        # Without Content-Length (chunked upload), the limit is enforced while reading.
        def chunks():
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            for _ in range(100):
                yield b"\0" * 4096

        r = httpx.post(
            url + "/v1/audio/transcriptions",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert r.status_code == 413
        r = httpx.post(url + "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": wav_2s})
        assert r.status_code == 400 and r.json()["error"]["code"] == "audio_too_long"
        assert httpx.get(url + "/health").status_code == 200


def test_auth_bearer_token(wav_2s):
    config = ServerConfig(model_name=MODEL)
    app = build_app(config, FakeEngine(), api_key="s3cret-key", registry=CollectorRegistry())
    with serve_in_thread(app) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s))
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "s3cret" not in r.text
        out = client(url, "s3cret-key").audio.transcriptions.create(model=MODEL, file=("a.wav", wav_2s))
        assert out.text == "w0 w1"
        for open_path in ("/health", "/ready", "/metrics"):
            assert httpx.get(url + open_path).status_code == 200


def _post_concurrently(url: str, data: dict[str, str], n: int) -> list[httpx.Response]:
    """``n`` transcription requests of 3 s of audio, each from its own thread, all at once."""
    results: list[httpx.Response] = []

    def send():
        results.append(
            httpx.post(
                url + "/v1/audio/transcriptions", data=data, files={"file": wav_bytes(3.0)}, timeout=30
            )
        )

    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_queue_full_sheds_with_429_and_retry_after():
    engine = FakeEngine(max_batch=1, max_queue=1, step_s=1.0)  # slow: all 6 overlap, even on a busy machine
    app = make_app(engine, retry_after_s=3)
    with serve_in_thread(app) as url:
        results = _post_concurrently(url, {"model": MODEL}, 6)
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        shed = [r for r in results if r.status_code == 429]
        assert all(r.headers["retry-after"] == "3" for r in shed)
        assert all(r.json()["error"]["type"] == "rate_limit_error" for r in shed)
        assert httpx.get(url + "/health").status_code == 200
        assert engine.load().running == 0 and engine.load().waiting == 0


def test_timeout_frees_slot():
    engine = FakeEngine(max_batch=1, max_queue=4, step_s=0.5)
    with serve_in_thread(make_app(engine, request_timeout_s=0.3)) as url:
        r = httpx.post(
            url + "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": wav_bytes(5.0)}
        )
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert engine.load().running == 0


def test_health_503_when_engine_dead_and_ready_waits_for_start():
    class SlowStart(FakeEngine):
        async def start(self):
            self.started = asyncio.Event()
            await asyncio.sleep(0.5)
            await super().start()

    engine = SlowStart()
    with serve_in_thread(make_app(engine), wait_ready=False) as url:
        assert httpx.get(url + "/ready").status_code == 503
        assert httpx.get(url + "/health").status_code == 200
        engine.kill()
        assert httpx.get(url + "/health").status_code == 503
        r = httpx.post(
            url + "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": wav_bytes(1.0)}
        )
        assert r.status_code == 503 and json.loads(r.text)["error"]["code"] == "engine_dead"


def test_http_admission_sheds_before_reading_bodies():
    """Requests still uploading count against max_batch + max_queue, so overload never piles up."""
    engine = FakeEngine(max_batch=8, max_queue=64, step_s=1.0)
    app = make_app(engine, max_batch=1, max_queue=1)
    with serve_in_thread(app) as url:
        results = _post_concurrently(url, {"model": MODEL, "stream": "true"}, 6)
        codes = [r.status_code for r in results]
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        assert engine.max_seen_running <= 2
        for _ in range(100):  # the release runs just after the last byte is sent
            if app.state.inflight == 0:
                break
            time.sleep(0.02)
        assert app.state.inflight == 0  # streams released their admission when they ended
