"""The real `Engine`: audio → windows → prompts → scheduler (continuous batching) → text.

Each request's audio is cut into model windows (`trainer.data.silence.plan_windows`: in a pause near each
window's end, else at a fixed length with overlap); every window becomes one `scheduler.Sequence` (its own
ASR prompt with the window's log-mel), and all windows of a request are submitted together, so a long file
decodes its windows side by side in the batch, at most ``max_windows_per_request`` at a time so that short
requests are not starved. Results are stitched word by word (`longform.join_next`: a window that starts in a
pause just follows; one that overlaps is merged).

The request's ``language`` picks the instruction's wording and its ``prompt`` becomes the prompt's context
(`trainer.data.text.PromptStyle`, `clip_context`: the one place prompts are built, as in training).

Streaming: a one-window request streams token by token. A multi-window request streams each window's words
once they can no longer change: the merge of an overlapping next window may rewrite at most the last
``max_overlap`` words of what came before, so only words before that are sent early, and the rest once that
window is merged; before a window that starts in a pause, everything is final. The text of the deltas
therefore always adds up to the final text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.engine import (
    BadRequest,
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
from inference_server.scheduler import ModelRunner, Sampling, Scheduler, SchedulerDead, Sequence
from inference_server.scheduler import QueueFull as SchedulerQueueFull
from trainer.data.audio import SAMPLE_RATE, log_mel
from trainer.data.longform import join_next
from trainer.data.silence import DEFAULT_SEARCH_S, CutMode, Window, plan_windows, segment_spans
from trainer.data.text import PromptError, PromptStyle
from trainer.model.geometry import encoder_token_count

log = logging.getLogger("sawt.serve")

# Words of a window's head/tail searched for the overlap when stitching; an overlap of a few seconds of
# speech holds far fewer words, and the bound keeps earlier text stable for streaming.
MAX_OVERLAP_WORDS = 24
# Most tokens of a request's `prompt` kept as context (its end), as Whisper keeps the last 224.
DEFAULT_MAX_CONTEXT_TOKENS = 224


@dataclass(frozen=True)
class AsrPrompt:
    """What the runner prefills for one audio window (one row of the batch dict, docs/interfaces.md §1)."""

    input_ids: np.ndarray  # int32 [S]
    audio_mel: np.ndarray  # float32 [128, F]
    audio_frames: int
    audio_tokens: int
    audio_offset: int


class TextSide:
    """The tokenizer as the engine needs it: ASR prompt ids, decoding, stop ids, the run's prompt wording.

    Args:
        prompt_ids: (audio tokens, instruction, context or None) -> prompt ids.
        decode: ids -> text.
        stop_ids: ids that end a window's hypothesis.
        audio_pad_id: the audio placeholder id.
        style: the instruction's wording, per language.
        clip_context: a request's prompt -> the context put into the prompt (None: none), raising
            `PromptError` for one that cannot go in; the default keeps it as it is.
    """

    def __init__(
        self,
        prompt_ids: Callable[[int, str, str | None], list[int]],
        decode: Callable[[list[int]], str],
        stop_ids: frozenset[int],
        audio_pad_id: int,
        *,
        style: PromptStyle | None = None,
        clip_context: Callable[[str | None], str | None] | None = None,
    ):
        self.prompt_ids = prompt_ids
        self.decode = decode
        self.stop_ids = stop_ids
        self.audio_pad_id = audio_pad_id
        self.style = style or PromptStyle()
        self.clip_context = clip_context or (lambda text: text or None)

    @classmethod
    def from_tokenizer(
        cls,
        tok,
        eos_ids: tuple[int, ...] = (),
        *,
        style: PromptStyle | None = None,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    ) -> TextSide:
        """Builds it from a loaded tokenizer through `trainer.data.text` (one place for prompts).

        Generation stops at ``<|im_end|>``, ``<|endoftext|>`` (ids read from the tokenizer) and ``eos_ids``
        (the model's). ``style``: the run's prompt wording (`checkpoint_prompt`).
        """
        from trainer.data import text

        return cls(
            prompt_ids=lambda n, instruction, context: list(
                text.asr_prompt_ids(tok, n, instruction, context)
            ),
            decode=lambda ids: tok.decode(ids),
            stop_ids=frozenset({tok.im_end_id, tok.endoftext_id, *eos_ids}),
            audio_pad_id=int(tok.audio_pad_id),
            style=style,
            clip_context=lambda context: text.clip_context(tok, context, max_context_tokens),
        )

    @classmethod
    def from_tokenizer_dir(cls, path: str, eos_ids: tuple[int, ...] = (), **kwargs: Any) -> TextSide:
        """`from_tokenizer` of an HF tokenizer directory."""
        from trainer.data import text

        return cls.from_tokenizer(text.load_tokenizer(path), eos_ids, **kwargs)

    def request_prompt(self, language: str | None, prompt: str | None) -> tuple[str, str | None]:
        """(instruction, context) of a request. Raises `PromptError` for an unsupported language or prompt."""
        return self.style.instruction_for(language), self.clip_context(prompt)

    def prompt_overhead(self, context_tokens: int = 0) -> int:
        """Most prompt tokens besides the audio, over every instruction, with a context of that many tokens."""
        longest = 0
        for instruction in {self.style.instruction, *self.style.languages.values()}:
            plain = len(self.prompt_ids(0, instruction, None))
            if context_tokens:
                # A one-character context shows the system turn's scaffolding; the tokens of a real one
                # may merge differently at its edges, hence a small margin.
                plain = len(self.prompt_ids(0, instruction, "x")) - 1 + context_tokens + 4
            longest = max(longest, plain)
        return longest


def make_prompt(
    wave: np.ndarray,
    text_side: TextSide,
    n_window: int,
    instruction: str | None = None,
    context: str | None = None,
) -> AsrPrompt:
    mel = log_mel(wave)
    frames = mel.shape[1]
    n_audio = int(encoder_token_count(frames, n_window))
    ids = np.asarray(
        text_side.prompt_ids(n_audio, instruction or text_side.style.instruction, context), np.int32
    )
    offset = int(np.argmax(ids == text_side.audio_pad_id))
    return AsrPrompt(ids, mel.astype(np.float32), frames, n_audio, offset)


class ModelEngine:
    """`Engine` over a `ModelRunner` (the JAX thinker) and the scheduler.

    Args:
        runner_factory: builds (loads, compiles, warms) the runner; called in a worker thread by `start`.
        text_side: tokenizer functions and the prompt's wording.
        model_name: what /v1/models reports.
        max_queue: sequences (audio windows) allowed to wait.
        window_s, overlap_s: long-audio windowing (the longest window; the overlap at a fixed cut).
        cut: ``silence`` (cut in pauses, fixed cuts where there are none) or ``fixed``.
        search_s: how far back from a window's longest end a pause is looked for.
        max_windows_per_request: most windows of one request decoding at once (None: no limit).
        n_window: the audio encoder's half chunk (for the audio token count), from the checkpoint's
            model_config.json like the runner's, so prompt and model agree on the geometry.
        default_max_new_tokens: the cap of every window's budget.
        budget: the per-window generation budget (`trainer.data.length.LengthBudget`); None: the cap.
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
        cut: CutMode = "silence",
        search_s: float = DEFAULT_SEARCH_S,
        max_windows_per_request: int | None = None,
        n_window: int,
        default_max_new_tokens: int = 448,
        budget: Any = None,
    ):
        self.model_name = model_name
        self._runner_factory = runner_factory
        self.text_side = text_side
        self.max_queue = max_queue
        self.window_s = window_s
        self.overlap_s = overlap_s
        self.cut = cut
        self.search_s = search_s
        self.max_windows_per_request = max_windows_per_request
        self.n_window = n_window
        self.default_max_new_tokens = default_max_new_tokens
        self.budget = budget
        self.scheduler: Scheduler | None = None
        self._start_error: BaseException | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    def max_new_tokens_for(self, seconds: float) -> int:
        """The generation budget of one audio window of ``seconds``, at most the configured cap."""
        if self.budget is None:
            return self.default_max_new_tokens
        return min(self.default_max_new_tokens, self.budget.max_new_tokens(seconds))

    async def start(self) -> None:
        try:
            runner = await asyncio.to_thread(self._runner_factory)
        except BaseException as err:
            self._start_error = err
            raise
        self.scheduler = Scheduler(
            runner, max_queue=self.max_queue, max_running_per_group=self.max_windows_per_request
        )
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
        try:
            instruction, context = self.text_side.request_prompt(params.language, params.prompt)
        except PromptError as err:
            raise BadRequest(str(err), param=err.param, code=f"unsupported_{err.param}") from None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        windows = plan_windows(
            params.audio, self.window_s, self.overlap_s, cut=self.cut, search_s=self.search_s
        )
        stats = RequestStats(arrival=time.monotonic(), audio_seconds=params.audio_seconds)
        group = object()  # the request: the scheduler bounds how many of its windows run at once
        seqs = []
        for w, window in enumerate(windows):
            prompt = make_prompt(
                params.audio[window.start : window.end], self.text_side, self.n_window, instruction, context
            )
            stats.audio_tokens += prompt.audio_tokens
            # Each window's budget follows its audio (trainer/data/length.py) unless the request set one;
            # a window that hits it finishes with reason "length" (counted in the request metrics).
            seconds = (window.end - window.start) / SAMPLE_RATE
            sampling = Sampling(
                temperature=params.temperature,
                top_p=params.top_p,
                max_new_tokens=params.max_new_tokens or self.max_new_tokens_for(seconds),
                stop_ids=self.text_side.stop_ids,
            )

            def on_token(tok: int, t: float, w: int = w) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, ("token", w, tok, t))

            def on_finish(reason: str, seq_stats: Any, w: int = w) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, ("finish", w, reason, seq_stats))

            seqs.append(Sequence(prompt, len(prompt.input_ids), sampling, on_token, on_finish, group=group))
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

        return RequestStream(self._events(params, windows, seqs, queue, stats), cancel_all)

    async def _events(
        self,
        params: TranscribeParams,
        windows: list[Window],
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
                    overlapped = windows[next_window].overlap > 0
                    merged, cut = join_next(merged, words, overlapped, MAX_OVERLAP_WORDS)
                    cuts.append(cut)
                    next_window += 1
                if n > 1:
                    # Words the next window's merge could still rewrite wait (none before a pause cut).
                    if next_window == n or windows[next_window].overlap == 0:
                        stable = len(merged)
                    else:
                        stable = max(0, len(merged) - MAX_OVERLAP_WORDS)
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
            segments = _segments(windows, merged if n > 1 else text.split(), cuts, ids)
            reason = "length" if "length" in reasons else ("abort" if "abort" in reasons else "stop")
            if reason == "length":
                log.warning(
                    "%d of %d windows of a %.1f s request were cut at their generation budget",
                    reasons.count("length"),
                    n,
                    params.audio_seconds,
                )
            yield Finished(text, reason, segments, stats, params.language)
        finally:
            for seq, r in zip(seqs, reasons, strict=True):
                if r is None:
                    self.scheduler.cancel(seq)


def _segments(
    windows: list[Window], words: list[str], cuts: list[int], ids: list[list[int]]
) -> tuple[Segment, ...]:
    """One segment per window, timed in the source audio (`silence.segment_spans`: spans meet at a pause
    cut, or in the middle of an overlap), holding the words the stitch kept from that window."""
    spans = segment_spans(windows, SAMPLE_RATE)
    n = len(windows)
    if n == 1:
        return (Segment(spans[0][0], spans[0][1], " ".join(words), tuple(ids[0])),)
    out = []
    for w, (start, end) in enumerate(spans):
        lo = min(cuts[w], len(words))
        hi = len(words) if w == n - 1 else min(max(cuts[w + 1], lo), len(words))
        out.append(Segment(start, end, " ".join(words[lo:hi]), tuple(ids[w])))
    return tuple(out)
