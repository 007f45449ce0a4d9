"""`build_app(config, engine)`: the FastAPI app with its state on ``app.state`` (no globals).

Cross-cutting concerns sit in one pure-ASGI middleware, outermost, so they hold for every route and every
failure: the body-size limit (counted while reading, not trusted from headers), bearer-token auth on
``/v1/*`` (constant-time comparison; the key is never logged), and the HTTP request counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server.config import ServerConfig
from inference_server.engine import Engine
from inference_server.metrics import ServerMetrics
from inference_server.protocol import ApiError
from inference_server.routes import router

log = logging.getLogger("sawt.serve")

_OPEN_PATHS = ("/health", "/ready", "/metrics")
_KNOWN_ROUTES = ("/v1/audio/transcriptions", "/v1/models", *_OPEN_PATHS)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the body passes the limit mid-read."""


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _send_error(send: Send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Body limit, auth and the per-route HTTP counter, in front of every route."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_key: str | None, metrics: ServerMetrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _KNOWN_ROUTES else "other"
        status = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            err = self._reject(scope, path)
            if err is not None:
                await _send_error(counting_send, err)
                return
            await self.app(scope, self._limited(receive), counting_send)
        finally:
            self.metrics.http.labels(route=route, code=str(status["code"])).inc()

    def _reject(self, scope: Scope, path: str) -> ApiError | None:
        headers = dict(scope.get("headers") or [])
        if self._key is not None and path not in _OPEN_PATHS:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            # compare_digest: the time taken does not reveal how much of the key matched.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                return ApiError(
                    401,
                    "Incorrect or missing API key (send 'Authorization: Bearer <key>').",
                    code="invalid_api_key",
                )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                return ApiError(400, "Invalid Content-Length header.", code="invalid_header")
            if too_big:
                return _too_large(self.max_body_bytes)
        return None

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        return wrapped


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body exceeds {limit} bytes.", code="request_too_large")


def build_app(
    config: ServerConfig,
    engine: Engine,
    *,
    api_key: str | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Builds the server app around ``engine``.

    The engine is started in the background when the app starts, so `/health` answers at once and
    `/ready` turns 200 only after the model is loaded and warmed.

    Args:
        config: limits and serving settings.
        engine: what transcribes (the real `ModelEngine`, or `FakeEngine` in route tests).
        api_key: when set, `/v1/*` requires ``Authorization: Bearer <api_key>``.
        registry: where the Prometheus series live (a fresh registry when None).
    """
    registry = registry or CollectorRegistry()
    metrics = ServerMetrics(registry, engine.load)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start() -> None:
            try:
                await engine.start()
                log.info("engine ready: %s", config.model_name)
            except Exception:
                log.exception("engine failed to start")

        starting = asyncio.create_task(start())
        app.state.start_task = starting
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            await engine.stop()

    app = FastAPI(title="sawt ASR server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.draining = False
    app.state.inflight = 0  # transcription requests admitted and not yet answered (see routes.py)
    app.state.started_at = time.time()
    app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
        return _error_response(_too_large(config.max_body_bytes))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return _error_response(ApiError(err.status_code, str(err.detail), type=kind, headers=err.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error_response(ApiError(400, str(err.errors()[:1])))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(ApiError(500, "Internal server error.", type="server_error"))

    app.add_middleware(
        GuardMiddleware, max_body_bytes=config.max_body_bytes, api_key=api_key, metrics=metrics
    )
    return app
