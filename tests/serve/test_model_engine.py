"""`ModelEngine`: windowing, stitching, streaming deltas and cancellation, with a scripted runner.

The runner is a stand-in for the model only in this file, so that the text each window "hears" is known
and stitching can be checked exactly; the JAX runner is tested in test_e2e_engine.py.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from inference_server.engine import Finished, TextDelta, TranscribeParams
from inference_server.model_engine import AsrPrompt, ModelEngine, TextSide

STOP = 0
PAD = 5


class WindowScriptRunner:
    """The k-th prefill generates ``scripts[k]`` then the stop id (prefill order = window order: FIFO)."""

    def __init__(self, scripts, num_slots=2, gate=None):
        self.num_slots = num_slots
        self.max_seq_len = 4096
        self.scripts = list(scripts)
        self.prefills: list[AsrPrompt] = []
        self.cur = [[] for _ in range(num_slots)]
        self.gate = gate

    def _onehot(self, tok):
        out = np.zeros(64, np.float32)
        out[tok] = 1.0
        return out

    def prefill(self, slot, prompt):
        self.prefills.append(prompt)
        self.cur[slot] = [*self.scripts[len(self.prefills) - 1], STOP]
        return self._onehot(self.cur[slot].pop(0))

    def decode(self, tokens_b, active_b):
        if self.gate is not None:
            self.gate.wait()
        out = np.zeros((self.num_slots, 64), np.float32)
        for s in np.flatnonzero(active_b):
            out[s] = self._onehot(self.cur[s].pop(0))
        return out


TEXT = TextSide(
    prompt_ids=lambda n, instruction, context: [1, 3, *([PAD] * n), 4, 2],
    decode=lambda ids: " ".join(f"w{i}" for i in ids),
    stop_ids=frozenset({STOP}),
    audio_pad_id=PAD,
)


async def _run(engine, seconds, collect=True):
    await engine.start()
    try:
        wave = 0.1 * np.sin(np.arange(int(seconds * 16000)) / 7.0).astype(np.float32)
        events = [e async for e in engine.transcribe(TranscribeParams(audio=wave))]
    finally:
        await engine.stop()
    return events


def test_long_audio_windows_are_stitched_and_streamed_consistently():
    # 5 s with 2 s windows and 0.5 s overlap: windows at 0, 1.5 and 3 s.
    scripts = [list(range(10, 18)), list(range(16, 24)), list(range(22, 30))]
    runner = WindowScriptRunner(scripts, num_slots=2)
    engine = ModelEngine(lambda: runner, TEXT, model_name="m", n_window=50, window_s=2.0, overlap_s=0.5)
    events = asyncio.run(_run(engine, 5.0))
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.text == " ".join(f"w{i}" for i in range(10, 30))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == final.text
    assert len(final.segments) == 3
    assert " ".join(s.text for s in final.segments) == final.text
    assert [round(s.start, 2) for s in final.segments] == [0.0, 1.75, 3.25]
    assert final.segments[-1].end == 5.0
    # Each window got its own prompt whose audio-token run matches its mel length.
    assert len(runner.prefills) == 3
    for p in runner.prefills:
        assert (p.input_ids == PAD).sum() == p.audio_tokens and p.input_ids[p.audio_offset] == PAD
    assert final.stats.generation_tokens == 24 and final.finish_reason == "stop"


def test_single_window_streams_token_by_token():
    runner = WindowScriptRunner([[7, 8, 9]])
    engine = ModelEngine(lambda: runner, TEXT, model_name="m", n_window=50)
    events = asyncio.run(_run(engine, 1.0))
    assert [e.text for e in events[:-1]] == ["w7", " w8", " w9"]
    assert events[-1].text == "w7 w8 w9"


def test_closing_the_stream_cancels_and_frees_slots():
    gate = threading.Event()
    runner = WindowScriptRunner([list(range(10, 40))], num_slots=1, gate=gate)
    engine = ModelEngine(lambda: runner, TEXT, model_name="m", n_window=50)

    async def main():
        await engine.start()
        events = engine.transcribe(TranscribeParams(audio=np.ones(16000, np.float32) * 0.1))
        first = await anext(events)
        await events.aclose()
        gate.set()
        for _ in range(100):
            if engine.load().running == 0:
                break
            await asyncio.sleep(0.02)
        load = engine.load()
        await engine.stop()
        return first, load

    first, load = asyncio.run(main())
    assert first.text == "w10" and load.running == 0 and load.waiting == 0


def _phrases(spans_s: list[tuple[float, float]], total_s: float) -> np.ndarray:
    """Noise "speech" over the given spans and digital silence elsewhere."""
    rng = np.random.default_rng(0)
    wave = np.zeros(int(total_s * 16000), np.float32)
    for a, b in spans_s:
        wave[int(a * 16000) : int(b * 16000)] = 0.2 * rng.standard_normal(int(b * 16000) - int(a * 16000))
    return wave


def test_windows_cut_in_pauses_follow_each_other_and_carry_their_times():
    # Speech 0.2-1.5 s, 1.9-3.4 s, 3.8-4.8 s with 2 s windows: the cuts fall in the two pauses.
    wave = _phrases([(0.2, 1.5), (1.9, 3.4), (3.8, 4.8)], 5.0)
    # The same words end window 0 and start window 1 (a repeated phrase): after a pause cut nothing is
    # merged away, whereas an overlap merge would have dropped the repeat.
    scripts = [[10, 11, 12], [11, 12, 13], [14]]
    runner = WindowScriptRunner(scripts, num_slots=1)  # one window at a time: deltas come window by window
    engine = ModelEngine(lambda: runner, TEXT, model_name="m", n_window=50, window_s=2.0, overlap_s=0.5)

    async def main():
        await engine.start()
        try:
            return [e async for e in engine.transcribe(TranscribeParams(audio=wave))]
        finally:
            await engine.stop()

    events = asyncio.run(main())
    final = events[-1]
    assert final.text == "w10 w11 w12 w11 w12 w13 w14"
    assert [s.text for s in final.segments] == ["w10 w11 w12", "w11 w12 w13", "w14"]
    starts = [s.start for s in final.segments]
    assert 1.5 < starts[1] < 1.9 and 3.4 < starts[2] < 3.8  # in the pauses
    assert [s.end for s in final.segments[:-1]] == starts[1:] and final.segments[-1].end == 5.0
    # Before a window that starts in a pause nothing can change: every window's words stream at once.
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["w10 w11 w12", " w11 w12 w13", " w14"]
    assert final.stats.audio_tokens == sum(p.audio_tokens for p in runner.prefills)
