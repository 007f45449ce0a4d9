"""The narrow interface between HTTP routes and whatever turns audio into text.

Routes only see `Engine`: submit a request, iterate its events (text deltas, then one `Finished`), read
load figures for metrics and readiness. `FakeEngine` implements it without a model for route tests; the
real engine (`inference_server.model_engine.ModelEngine`) drives the JAX thinker through the scheduler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from trainer.data.audio_io import SAMPLE_RATE
from trainer.data.text import PromptError, PromptStyle


class QueueFull(Exception):
    """The waiting queue is at its bound: the caller should retry later (HTTP 429)."""


class EngineDead(Exception):
    """The engine's worker has failed; no request can be served (HTTP 503, /health 503)."""


class BadRequest(Exception):
    """The request asks for something the engine cannot do, e.g. an unsupported language (HTTP 400).

    Attributes:
        param: the request field at fault; code: the OpenAI-style error code.
    """

    def __init__(self, message: str, *, param: str, code: str):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class TranscribeParams:
    """One transcription request, already validated and decoded.

    Attributes:
        audio: float32 mono samples at 16 kHz, any length (long audio is windowed by the engine).
        language: ISO-639-1 hint, or None.
        prompt: optional text that guides style/vocabulary.
        temperature: 0 for greedy decoding.
        top_p: nucleus sampling mass (used when temperature > 0).
        max_new_tokens: upper bound on generated tokens per audio window; None for the engine default.
    """

    audio: np.ndarray
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript with its time span (one per audio window)."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()


@dataclass
class RequestStats:
    """Per-request timings and counts the engine reports with `Finished`; metrics turn them into series.

    Times are `time.monotonic()` seconds; ``None`` when the phase never happened (e.g. cancelled in queue).
    """

    arrival: float
    scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0  # every window's prompt, audio placeholders included
    audio_tokens: int = 0  # the audio placeholders among them
    generation_tokens: int = 0
    audio_seconds: float = 0.0


@dataclass(frozen=True)
class TextDelta:
    """New text appended to the transcript (the concatenation of deltas is the final text)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a request."""

    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    segments: tuple[Segment, ...]
    stats: RequestStats
    language: str | None = None


Event = TextDelta | Finished


class RequestStream:
    """The events of one request; `aclose` always releases what the request holds.

    An async generator that never started cannot run its ``finally`` on close, so the release is explicit:
    ``on_close`` runs exactly once, whether the stream ended, failed, was abandoned early or never read.
    """

    def __init__(self, events: AsyncIterator[Event], on_close: Callable[[], None]):
        self._events = events
        self._on_close = on_close
        self._closed = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Event:
        return await anext(self._events)

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            if not self._closed:
                self._closed = True
                self._on_close()


@dataclass(frozen=True)
class EngineLoad:
    """What the engine is doing now (read at scrape time)."""

    running: int
    waiting: int
    slot_usage: float  # fraction of decode slots (KV-cache rows) in use


class Engine(Protocol):
    """What routes need from an engine."""

    model_name: str

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed (every static shape compiled)."""
        ...

    @property
    def alive(self) -> bool:
        """False once the worker has died; the server then reports unhealthy."""
        ...

    def load(self) -> EngineLoad: ...

    def transcribe(self, params: TranscribeParams) -> RequestStream:
        """Starts a request. Raises `QueueFull`, `EngineDead` or `BadRequest` at once (before any event) when it
        cannot.

        The stream yields `TextDelta`s then one `Finished`. The caller must `aclose` it (also when it stops
        early: client gone, timeout), which cancels whatever is unfinished and frees its slots.
        """
        ...

    async def start(self) -> None:
        """Loads and warms up (may take long); `ready` turns True at the end."""
        ...

    async def stop(self) -> None: ...


class FakeEngine:
    """An `Engine` without a model, for route, limit and protocol tests.

    It "transcribes" any audio as ``words`` (default: one word per started second of audio, ``w0 w1 ...``),
    emitting one word per step after ``step_s`` seconds, with at most ``max_batch`` requests running and
    ``max_queue`` waiting: the same admission rules as the real engine, so shedding can be tested.
    """

    def __init__(
        self,
        *,
        max_batch: int = 4,
        max_queue: int = 16,
        step_s: float = 0.0,
        words: list[str] | None = None,
        model_name: str = "fake-asr",
        window_s: float = 30.0,
    ):
        self.model_name = model_name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.step_s = step_s
        self.words = words
        self.window_s = window_s
        self._ready = False
        self._alive = True
        self._running = 0
        self._waiting = 0
        self.max_seen_running = 0
        self._slots: asyncio.Semaphore | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def alive(self) -> bool:
        return self._alive

    def kill(self) -> None:
        """Simulates a dead worker (for /health tests)."""
        self._alive = False

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.max_batch)
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    def load(self) -> EngineLoad:
        return EngineLoad(self._running, self._waiting, self._running / self.max_batch)

    def transcribe(self, params: TranscribeParams) -> RequestStream:
        if not self._alive:
            raise EngineDead("engine worker is dead")
        try:  # the same languages as the real engine's default prompt wording
            PromptStyle().instruction_for(params.language)
        except PromptError as err:
            raise BadRequest(str(err), param=err.param, code=f"unsupported_{err.param}") from None
        if self._slots is None:
            raise EngineDead("engine not started")
        if self._waiting >= self.max_queue:
            raise QueueFull(f"{self._waiting} requests waiting")
        self._waiting += 1  # counted at once, so admission of concurrent submits is exact
        progress = {"in_queue": True}

        def release() -> None:  # a stream closed before it ever ran still leaves the queue
            if progress["in_queue"]:
                progress["in_queue"] = False
                self._waiting -= 1

        return RequestStream(self._run(params, time.monotonic(), progress), release)

    async def _run(self, params: TranscribeParams, arrival: float, progress: dict) -> AsyncIterator[Event]:
        assert self._slots is not None
        stats = RequestStats(arrival=arrival, audio_seconds=params.audio_seconds)
        await self._slots.acquire()
        try:
            if progress["in_queue"]:
                progress["in_queue"] = False
                self._waiting -= 1
            self._running += 1
            self.max_seen_running = max(self.max_seen_running, self._running)
            try:
                stats.scheduled = time.monotonic()
                n = max(1, int(np.ceil(params.audio_seconds)))
                words = self.words if self.words is not None else [f"w{i}" for i in range(n)]
                stats.prompt_tokens = n
                stats.audio_tokens = n
                emitted: list[str] = []
                finish_reason = "stop"
                limit = params.max_new_tokens
                for i, word in enumerate(words):
                    if limit is not None and i >= limit:
                        finish_reason = "length"
                        break
                    await asyncio.sleep(self.step_s)
                    now = time.monotonic()
                    if stats.first_token is None:
                        stats.first_token = now
                    stats.token_times.append(now)
                    stats.generation_tokens += 1
                    delta = word if not emitted else " " + word
                    emitted.append(word)
                    yield TextDelta(delta)
                stats.finished = time.monotonic()
                stats.decode_seconds = stats.finished - stats.scheduled
                text = " ".join(emitted)
                segment = Segment(0.0, params.audio_seconds, text)
                yield Finished(text, finish_reason, (segment,), stats, params.language)
            finally:
                self._running -= 1
        finally:
            self._slots.release()
