"""The real `Engine`: audio → windows → prompts → scheduler (continuous batching) → text.

Each request's audio is cut into model windows (`longform.split_windows`); every window becomes one
`scheduler.Sequence` (its own ASR prompt with the window's log-mel), and all windows of a request are
submitted together, so a long file decodes its windows side by side in the batch. Results are stitched
(`longform.stitch`) word by word.

Streaming: a one-window request streams token by token. A multi-window request streams each window's words
once they can no longer change: the merge of the next window may rewrite at most the last ``max_overlap``
words of what came before, so only words before that are sent early, and the rest at the end. The text of
the deltas therefore always adds up to the final text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.engine import (
    EngineDead,
    EngineLoad,
    Event,
    Finished,
    QueueFull,
    RequestStats,
    RequestStream,
    Segment,
    TextDelta,
    TranscribeParams,
)
from inference_server.longform import merge_pair_at, window_bounds
from inference_server.scheduler import ModelRunner, Sampling, Scheduler, SchedulerDead, Sequence
from inference_server.scheduler import QueueFull as SchedulerQueueFull
from trainer.data.audio import SAMPLE_RATE, encoder_token_count, log_mel

# Words of a window's head/tail searched for the overlap when stitching; an overlap of a few seconds of
# speech holds far fewer words, and the bound keeps earlier text stable for streaming.
MAX_OVERLAP_WORDS = 24


@dataclass(frozen=True)
class AsrPrompt:
    """What the runner prefills for one audio window (one row of the batch dict, docs/interfaces.md §1)."""

    input_ids: np.ndarray  # int32 [S]
    audio_mel: np.ndarray  # float32 [128, F]
    audio_frames: int
    audio_tokens: int
    audio_offset: int


class TextSide:
    """The tokenizer as the engine needs it: ASR prompt ids, decoding, stop ids."""

    def __init__(
        self,
        prompt_ids: Callable[[int], list[int]],
        decode: Callable[[list[int]], str],
        stop_ids: frozenset[int],
        audio_pad_id: int,
    ):
        self.prompt_ids = prompt_ids
        self.decode = decode
        self.stop_ids = stop_ids
        self.audio_pad_id = audio_pad_id

    @classmethod
    def from_tokenizer_dir(cls, path: str, eos_ids: tuple[int, ...] = ()) -> TextSide:
        """Builds it from an HF tokenizer directory through `trainer.data.text` (one place for prompts).

        Generation stops at ``<|im_end|>``, ``<|endoftext|>`` (ids read from the tokenizer) and ``eos_ids``.
        """
        from trainer.data import text

        tok = text.load_tokenizer(path)
        return cls(
            prompt_ids=lambda n: list(text.asr_prompt_ids(tok, n)),
            decode=lambda ids: tok.decode(ids),
            stop_ids=frozenset({tok.im_end_id, tok.endoftext_id, *eos_ids}),
            audio_pad_id=int(tok.audio_pad_id),
        )


def make_prompt(wave: np.ndarray, text_side: TextSide, n_window: int = 50) -> AsrPrompt:
    mel = log_mel(wave)
    frames = mel.shape[1]
    n_audio = int(encoder_token_count(frames, n_window))
    ids = np.asarray(text_side.prompt_ids(n_audio), np.int32)
    offset = int(np.argmax(ids == text_side.audio_pad_id))
    return AsrPrompt(ids, mel.astype(np.float32), frames, n_audio, offset)


class ModelEngine:
    """`Engine` over a `ModelRunner` (the JAX thinker) and the scheduler.

    Args:
        runner_factory: builds (loads, compiles, warms) the runner; called in a worker thread by `start`.
        text_side: tokenizer functions.
        model_name: what /v1/models reports.
        max_queue: sequences (audio windows) allowed to wait.
        window_s, overlap_s: long-audio windowing.
        n_window: the audio encoder's half chunk (for the audio token count).
    """

    def __init__(
        self,
        runner_factory: Callable[[], ModelRunner],
        text_side: TextSide,
        *,
        model_name: str,
        max_queue: int = 64,
        window_s: float = 30.0,
        overlap_s: float = 4.0,
        n_window: int = 50,
        default_max_new_tokens: int = 448,
    ):
        self.model_name = model_name
        self._runner_factory = runner_factory
        self.text_side = text_side
        self.max_queue = max_queue
        self.window_s = window_s
        self.overlap_s = overlap_s
        self.n_window = n_window
        self.default_max_new_tokens = default_max_new_tokens
        self.scheduler: Scheduler | None = None
        self._start_error: BaseException | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            runner = await asyncio.to_thread(self._runner_factory)
        except BaseException as err:
            self._start_error = err
            raise
        self.scheduler = Scheduler(runner, max_queue=self.max_queue)
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)

    @property
    def ready(self) -> bool:
        return self.scheduler is not None and self.scheduler.alive

    @property
    def alive(self) -> bool:
        if self._start_error is not None:
            return False
        return self.scheduler is None or self.scheduler.alive

    def load(self) -> EngineLoad:
        if self.scheduler is None:
            return EngineLoad(0, 0, 0.0)
        running, waiting = self.scheduler.counts()
        return EngineLoad(running, waiting, running / self.scheduler.runner.num_slots)

    # ---- requests ----------------------------------------------------------------------------------

    def transcribe(self, params: TranscribeParams) -> RequestStream:
        if self.scheduler is None or not self.alive:
            raise EngineDead("engine is not running")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        bounds = window_bounds(len(params.audio), self.window_s, self.overlap_s)
        sampling = Sampling(
            temperature=params.temperature,
            top_p=params.top_p,
            max_new_tokens=params.max_new_tokens or self.default_max_new_tokens,
            stop_ids=self.text_side.stop_ids,
        )
        stats = RequestStats(arrival=time.monotonic(), audio_seconds=params.audio_seconds)
        seqs = []
        for w, (s, e) in enumerate(bounds):
            prompt = make_prompt(params.audio[s:e], self.text_side, self.n_window)

            def on_token(tok: int, t: float, w: int = w) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, ("token", w, tok, t))

            def on_finish(reason: str, seq_stats: Any, w: int = w) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, ("finish", w, reason, seq_stats))

            seqs.append(Sequence(prompt, len(prompt.input_ids), sampling, on_token, on_finish))
        try:
            self.scheduler.submit(seqs)
        except SchedulerDead as err:
            raise EngineDead(str(err)) from None
        except SchedulerQueueFull as err:
            raise QueueFull(str(err)) from None
        stats.prompt_tokens = sum(seq.prompt_len for seq in seqs)
        scheduler = self.scheduler

        def cancel_all() -> None:  # finished sequences ignore it
            for seq in seqs:
                scheduler.cancel(seq)

        return RequestStream(self._events(params, bounds, seqs, queue, stats), cancel_all)

    async def _events(
        self,
        params: TranscribeParams,
        bounds: list[tuple[int, int]],
        seqs: list[Sequence],
        queue: asyncio.Queue[tuple[Any, ...]],
        stats: RequestStats,
    ) -> AsyncIterator[Event]:
        assert self.scheduler is not None
        n = len(seqs)
        ids: list[list[int]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        merged: list[str] = []  # stitched words of windows 0..next_window-1
        cuts: list[int] = []  # where each window's own words start in `merged`
        next_window = 0  # first window not yet merged (windows merge in order)
        emitted_words = 0  # multi-window: words already streamed
        emitted_text = ""  # one window: text already streamed (stripped; trailing spaces wait for a word)
        try:
            while next_window < n:
                kind, w, value, extra = await queue.get()
                if kind == "token":
                    ids[w].append(value)
                    stats.generation_tokens += 1
                    stats.token_times.append(extra)
                    if stats.first_token is None:
                        stats.first_token = extra
                    if n == 1:
                        text = self.text_side.decode(ids[0]).strip()
                        # Hold back a partial multi-byte character until its last byte arrives.
                        if (
                            not text.endswith("\ufffd")
                            and text.startswith(emitted_text)
                            and len(text) > len(emitted_text)
                        ):
                            yield TextDelta(text[len(emitted_text) :])
                            emitted_text = text
                    continue
                reasons[w] = value
                seq_stats = extra
                if seq_stats.scheduled is not None and (
                    stats.scheduled is None or seq_stats.scheduled < stats.scheduled
                ):
                    stats.scheduled = seq_stats.scheduled
                stats.prefill_seconds += seq_stats.prefill_seconds
                stats.decode_seconds += seq_stats.decode_seconds
                if seq_stats.error:
                    raise EngineDead(f"engine failed: {seq_stats.error}")
                while next_window < n and reasons[next_window] is not None:
                    words = self.text_side.decode(ids[next_window]).split()
                    merged, cut = merge_pair_at(merged, words, MAX_OVERLAP_WORDS)
                    cuts.append(cut)
                    next_window += 1
                if n > 1:
                    stable = len(merged) if next_window == n else max(0, len(merged) - MAX_OVERLAP_WORDS)
                    if stable > emitted_words:
                        chunk = " ".join(merged[emitted_words:stable])
                        yield TextDelta(chunk if emitted_words == 0 else " " + chunk)
                        emitted_words = stable
            stats.finished = time.monotonic()
            if n == 1:
                text = self.text_side.decode(ids[0]).strip()
                if len(text) > len(emitted_text) and text.startswith(emitted_text):
                    yield TextDelta(text[len(emitted_text) :])
            else:
                text = " ".join(merged)
            segments = _segments(bounds, merged if n > 1 else text.split(), cuts, ids, n)
            reason = "length" if "length" in reasons else ("abort" if "abort" in reasons else "stop")
            yield Finished(text, reason, segments, stats, params.language)
        finally:
            for seq, r in zip(seqs, reasons, strict=True):
                if r is None:
                    self.scheduler.cancel(seq)


def _segments(
    bounds: list[tuple[int, int]], words: list[str], cuts: list[int], ids: list[list[int]], n: int
) -> tuple[Segment, ...]:
    """One segment per window; consecutive segments meet in the middle of the windows' overlap."""
    if n == 1:
        s, e = bounds[0]
        return (Segment(s / SAMPLE_RATE, e / SAMPLE_RATE, " ".join(words), tuple(ids[0])),)
    out = []
    for w in range(n):
        start = bounds[w][0] if w == 0 else (bounds[w][0] + bounds[w - 1][1]) // 2
        end = bounds[w][1] if w == n - 1 else (bounds[w][1] + bounds[w + 1][0]) // 2
        lo = min(cuts[w], len(words))
        hi = len(words) if w == n - 1 else min(max(cuts[w + 1], lo), len(words))
        out.append(Segment(start / SAMPLE_RATE, end / SAMPLE_RATE, " ".join(words[lo:hi]), tuple(ids[w])))
    return tuple(out)
