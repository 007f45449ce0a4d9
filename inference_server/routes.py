"""HTTP routes: OpenAI-compatible transcription, model list, health, readiness, metrics.

Request parsing and validation happen here; turning audio into text is the engine's job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from inference_server import formats
from inference_server.config import ServerConfig
from inference_server.engine import (
    BadRequest,
    Engine,
    EngineDead,
    Event,
    Finished,
    QueueFull,
    RequestStream,
    TextDelta,
    TranscribeParams,
)
from inference_server.metrics import ServerMetrics
from inference_server.protocol import ApiError, TranscriptionForm, error_from_validation
from trainer.data.audio_io import AudioError, decode_audio

router = APIRouter()

_MAX_FORM_FIELDS = 16
_MIN_AUDIO_SECONDS = 0.1  # as OpenAI's API: shorter clips hold no speech


@router.get("/health")
async def health(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    if not engine.alive:
        return JSONResponse({"status": "dead"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    if request.app.state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not (engine.alive and engine.ready):
        return JSONResponse({"status": "loading" if engine.alive else "dead"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    name = request.app.state.config.model_name
    created = int(request.app.state.started_at)
    return JSONResponse(
        {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "sawt"}]}
    )


async def _parse_form(request: Request) -> tuple[TranscriptionForm, bytes]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            400, "Expected a multipart/form-data body with an audio 'file' field.", code="bad_content_type"
        )
    form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
    fields: dict[str, Any] = {}
    upload: UploadFile | None = None
    for key in set(form.keys()):
        values = form.getlist(key)
        if key == "file":
            if len(values) != 1 or not isinstance(values[0], UploadFile):
                raise ApiError(
                    400, "'file' must be one uploaded audio file.", param="file", code="invalid_file"
                )
            upload = values[0]
            continue
        if any(not isinstance(v, str) for v in values):
            raise ApiError(400, f"'{key}' must be a text field, not a file.", param=key, code="invalid_value")
        if key.endswith("[]"):
            fields[key] = list(values)
        elif len(values) > 1:
            raise ApiError(400, f"'{key}' was given {len(values)} times.", param=key, code="invalid_value")
        else:
            fields[key] = values[0]
    if upload is None:
        raise ApiError(
            400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    try:
        parsed = TranscriptionForm.model_validate(fields)
    except ValidationError as err:
        raise error_from_validation(err) from None
    data = await upload.read()
    return parsed, data


@router.post("/v1/audio/transcriptions")
async def create_transcription(request: Request) -> Response:
    config: ServerConfig = request.app.state.config
    engine: Engine = request.app.state.engine
    if request.app.state.draining:
        raise ApiError(503, "The server is shutting down.", type="server_error", code="draining")
    # Admission before reading the body: requests still uploading or decoding audio count too, so overload
    # is shed at once instead of piling up ahead of the engine's own queue bound.
    state = request.app.state
    if state.inflight >= config.max_batch + config.max_queue:
        raise _queue_full(config)
    state.inflight += 1
    streaming = False
    try:
        response = await _transcribe(request, config, engine)
        streaming = isinstance(response, StreamingResponse)
        return response
    finally:
        if not streaming:
            state.inflight -= 1


def _queue_full(config: ServerConfig) -> ApiError:
    return ApiError(
        429, "The server is at capacity; retry later.", type="rate_limit_error", code="queue_full",
        headers={"Retry-After": str(config.retry_after_s)},
    )  # fmt: skip


async def _transcribe(request: Request, config: ServerConfig, engine: Engine) -> Response:
    form, data = await _parse_form(request)
    if form.model != config.model_name:
        raise ApiError(
            404,
            f"The model '{form.model}' does not exist; this server serves '{config.model_name}'.",
            param="model",
            code="model_not_found",
        )
    if not data:
        raise ApiError(400, "The audio file is empty.", param="file", code="empty_audio")
    try:
        wave = await asyncio.to_thread(decode_audio, data)
    except AudioError as err:
        raise ApiError(400, f"Invalid audio file: {err}", param="file", code="invalid_audio") from None
    seconds = len(wave) / 16_000
    if seconds < _MIN_AUDIO_SECONDS:
        raise ApiError(
            400,
            f"Audio file is too short ({seconds:.3f} s). Minimum audio length is {_MIN_AUDIO_SECONDS} seconds.",
            param="file",
            code="audio_too_short",
        )
    if seconds > config.max_audio_seconds:
        raise ApiError(
            400,
            f"Audio is {seconds:.1f} s long; the limit is {config.max_audio_seconds:.0f} s.",
            param="file",
            code="audio_too_long",
        )
    params = TranscribeParams(
        audio=wave,
        language=form.language,
        prompt=form.prompt,
        temperature=form.temperature,
        max_new_tokens=None,  # the engine's budget: per window, from its duration, at most the configured cap
    )
    try:
        events = engine.transcribe(params)
    except BadRequest as err:
        raise ApiError(400, str(err), param=err.param, code=err.code) from None
    except QueueFull:
        raise _queue_full(config) from None
    except EngineDead:
        raise ApiError(503, "The engine is not running.", type="server_error", code="engine_dead") from None
    metrics: ServerMetrics = request.app.state.metrics
    deadline = time.monotonic() + config.request_timeout_s
    if form.stream:
        return _AdmittedStream(
            events,
            request.app.state,
            _sse(events, metrics, deadline),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    result = await _collect(events, deadline)
    metrics.observe(result)
    return _render(result, form)


async def _next(events: RequestStream, deadline: float) -> Event:
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await anext(events)
    except TimeoutError:
        await events.aclose()  # frees the slot
        raise ApiError(504, "The request timed out.", type="server_error", code="timeout") from None


async def _collect(events: RequestStream, deadline: float) -> Finished:
    try:
        while True:
            event = await _next(events, deadline)
            if isinstance(event, Finished):
                return event
    finally:
        await events.aclose()


async def _sse(events: RequestStream, metrics: ServerMetrics, deadline: float) -> AsyncIterator[bytes]:
    def frame(obj: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    try:
        while True:
            try:
                event = await _next(events, deadline)
            except ApiError as err:  # headers are gone: report in-band, as OpenAI streams do
                yield frame(err.body())
                return
            if isinstance(event, TextDelta):
                yield frame({"type": "transcript.text.delta", "delta": event.text})
            else:
                metrics.observe(event)
                yield frame(
                    {"type": "transcript.text.done", "text": event.text, "usage": formats.usage(event)}
                )
                yield b"data: [DONE]\n\n"
                return
    finally:
        await events.aclose()  # client gone or finished: the slot is freed either way


class _AdmittedStream(StreamingResponse):
    """An SSE response that, however it ends (done, client gone, never started), closes the request's
    stream (freeing its slots) and releases its admission."""

    def __init__(self, events: RequestStream, state: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._events = events
        self._state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.inflight -= 1
            await self._events.aclose()


def _render(result: Finished, form: TranscriptionForm) -> Response:
    if form.response_format == "json":
        return JSONResponse(formats.as_json(result))
    if form.response_format == "verbose_json":
        return JSONResponse(formats.as_verbose_json(result, form.temperature))
    if form.response_format == "text":
        return PlainTextResponse(result.text + "\n")
    if form.response_format == "srt":
        return PlainTextResponse(formats.as_srt(result), media_type="application/x-subrip")
    return PlainTextResponse(formats.as_vtt(result), media_type="text/vtt")
