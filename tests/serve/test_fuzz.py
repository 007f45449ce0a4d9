"""Fuzzing the transcription API: hundreds of malformed requests, each answered 4xx with an OpenAI-style
error JSON, and the server stays healthy (and still transcribes) afterwards.

Uses the FakeEngine: the fuzz targets request parsing and validation, which sit before the engine.
"""

from __future__ import annotations

import httpx
import pytest
from helpers.serving import serve_in_thread, wav_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from inference_server.app import build_app
from inference_server.config import ServerConfig
from inference_server.engine import FakeEngine

MODEL = "sawt-asr"
VALID_WAV = wav_bytes(1.0)
KNOWN = ["model", "language", "prompt", "response_format", "temperature", "stream", "file"]


@pytest.fixture(scope="module")
def url():
    app = build_app(
        ServerConfig(model_name=MODEL, max_body_bytes=256 * 1024), FakeEngine(), registry=CollectorRegistry()
    )
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def _check(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


junk_text = st.text(max_size=40)
junk_bytes = st.binary(max_size=2048)


@st.composite
def bad_multipart(draw):
    """A multipart request with at least one thing wrong."""
    fields = {"model": MODEL}
    files = {"file": ("a.wav", VALID_WAV, "audio/wav")}
    flaw = draw(
        st.sampled_from(
            [
                "bad_audio",
                "unknown_field",
                "bad_format",
                "bad_temperature",
                "bad_model",
                "no_file",
                "file_as_text",
                "bad_language",
                "bad_stream",
                "dup_field",
                "truncated_wav",
            ]
        )
    )
    if flaw == "bad_audio":
        files["file"] = ("a.wav", draw(junk_bytes), draw(st.sampled_from(["audio/wav", "text/plain", ""])))
    elif flaw == "unknown_field":
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        if name in KNOWN:
            name += "_x"
        fields[name] = draw(junk_text)
    elif flaw == "bad_format":
        fields["response_format"] = draw(
            junk_text.filter(lambda s: s not in {"json", "text", "srt", "vtt", "verbose_json"})
        )
    elif flaw == "bad_temperature":
        fields["temperature"] = draw(
            st.one_of(
                st.floats(min_value=1.0001, allow_nan=False, allow_infinity=False).map(str),
                st.floats(max_value=-0.0001, allow_nan=False, allow_infinity=False).map(str),
                st.sampled_from(["nan", "inf", "hot", "", "1e999", "[]"]),
            )
        )
    elif flaw == "bad_model":
        fields["model"] = draw(junk_text.filter(lambda s: s != MODEL))
    elif flaw == "no_file":
        del files["file"]
        files["prompt"] = (None, draw(junk_text))
    elif flaw == "file_as_text":
        files["file"] = (None, draw(junk_text))
    elif flaw == "bad_language":
        fields["language"] = draw(
            st.text(min_size=17, max_size=40) | st.sampled_from(["1", "en us", "ar!", ""])
        )
    elif flaw == "bad_stream":
        fields["stream"] = draw(st.sampled_from(["maybe", "2", "yes please", "[]"]))
    elif flaw == "dup_field":
        return [("model", (None, MODEL)), ("model", (None, MODEL)), ("file", ("a.wav", VALID_WAV))], None
    elif flaw == "truncated_wav":
        files["file"] = ("a.wav", VALID_WAV[: draw(st.integers(0, 60))])
    return fields, files


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=bad_multipart())
def test_malformed_multipart_requests(url, req):
    fields, files = req
    if files is None:
        r = url.post("/v1/audio/transcriptions", files=fields)
    else:
        r = url.post("/v1/audio/transcriptions", data=fields, files=files)
    _check(r)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=junk_bytes,
    content_type=st.sampled_from(
        [
            "multipart/form-data; boundary=xyz",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
)
def test_raw_garbage_bodies(url, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = url.post("/v1/audio/transcriptions", content=body, headers=headers)
    _check(r)


def test_oversized_and_still_healthy(url):
    r = url.post("/v1/audio/transcriptions", data={"model": MODEL}, files={"file": b"\0" * (300 * 1024)})
    assert r.status_code == 413
    _check(r)
    assert url.get("/health").status_code == 200
    ok = url.post("/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("a.wav", VALID_WAV)})
    assert ok.status_code == 200 and ok.json()["text"] == "w0"
