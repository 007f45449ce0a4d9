"""The real engine (JAX runner + scheduler + tokenizer) on a tiny random checkpoint.

Checks that KV-cache decoding with continuous batching produces exactly the tokens of a cache-free greedy
loop over the full forward pass, for several requests of different lengths decoded side by side, and that
long audio is windowed and stitched.
"""

from __future__ import annotations

import asyncio
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from inference_server.config import ServerConfig
from inference_server.engine import TextDelta, TranscribeParams
from inference_server.main import build_engine
from inference_server.model_engine import make_prompt
from trainer.data.longform import split_windows, stitch

N_NEW = 12


def _clip(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * freq * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    config = ServerConfig(max_batch=3, max_new_tokens=N_NEW, window_s=4.0, overlap_s=1.0)
    eng = build_engine(tiny_checkpoint, config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(eng.start())
    yield eng, loop
    loop.run_until_complete(eng.stop())
    loop.close()


@functools.cache
def _load_model(checkpoint):
    from trainer.model.params import load_param_tree
    from trainer.model.thinker import Thinker
    from trainer.model_checkpoint import load_model_checkpoint

    config, params = load_model_checkpoint(checkpoint)
    model = Thinker(config, rngs=nnx.Rngs(0))
    load_param_tree(model, params)
    return model


def _reference_greedy(checkpoint, prompt, stop_ids, n_new):
    """Greedy decoding by re-running the full forward pass (no KV cache) at a fixed padded length."""
    model = _load_model(checkpoint)
    n = len(prompt.input_ids)
    s = n + n_new
    ids = np.zeros((1, s), np.int32)
    ids[0, :n] = prompt.input_ids

    @nnx.jit
    def step(model, ids, length):
        mask = np.arange(s)[None] < length
        batch = {
            "input_ids": ids,
            "token_mask": mask,
            "positions": jax.numpy.where(mask, np.arange(s)[None], 0).astype(np.int32),
            "audio_mel": prompt.audio_mel[None],
            "audio_frames": np.array([prompt.audio_frames], np.int32),
            "audio_tokens": np.array([prompt.audio_tokens], np.int32),
            "audio_offset": np.array([prompt.audio_offset], np.int32),
        }
        return model(batch).logits[0, length - 1]

    out = []
    for i in range(n_new):
        tok = int(jax.numpy.argmax(step(model, ids, n + i)))
        if tok in stop_ids:
            break
        out.append(tok)
        ids[0, n + i] = tok
    return out


def test_batched_cached_decode_matches_full_forward(engine, tiny_checkpoint):
    eng, loop = engine
    # Windows of one request enter the batch together: three rows with different prompt lengths (the last
    # window is shorter, so it uses another audio bucket), plus a second request that joins mid-flight.
    long_clip = _clip(9.5, 220.0)
    short_clip = _clip(1.3, 500.0)

    async def run_all():
        first = eng.transcribe(TranscribeParams(audio=long_clip))
        second = eng.transcribe(TranscribeParams(audio=short_clip))

        async def drain(s):
            return [e async for e in s]

        return await asyncio.gather(drain(first), drain(second))

    long_events, short_events = loop.run_until_complete(run_all())
    assert eng.scheduler.max_running_seen == 3
    windows = split_windows(long_clip, 4.0, 1.0)
    cases = [(w, seg) for w, seg in zip(windows, long_events[-1].segments, strict=True)]
    cases.append((short_clip, short_events[-1].segments[0]))
    for audio, segment in cases:
        prompt = make_prompt(audio, eng.text_side, eng.n_window)
        want = _reference_greedy(tiny_checkpoint, prompt, eng.text_side.stop_ids, N_NEW)
        assert list(segment.tokens) == want
    final = short_events[-1]
    assert final.text == eng.text_side.decode(list(final.segments[0].tokens)).strip()
    assert "".join(e.text for e in short_events if isinstance(e, TextDelta)) == final.text


def test_long_audio_is_windowed_and_stitched(engine):
    eng, loop = engine
    clip = _clip(9.0, 300.0)  # 4 s windows, 1 s overlap: 3 windows

    async def run(audio):
        return [e async for e in eng.transcribe(TranscribeParams(audio=audio))]

    events = loop.run_until_complete(run(clip))
    final = events[-1]
    windows = split_windows(clip, 4.0, 1.0)
    assert len(windows) == len(final.segments) == 3
    per_window = [loop.run_until_complete(run(w))[-1].text for w in windows]
    assert final.text == stitch(per_window, max_overlap=24)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == final.text
    assert final.segments[-1].end == pytest.approx(9.0)


def test_language_and_prompt_decode_in_the_context_prompt_width(engine, tiny_checkpoint):
    """A request with a prompt is prefilled at the wider prompt width compiled for contexts, and decodes
    exactly as the cache-free reference does on the same prompt."""
    eng, loop = engine
    clip = _clip(2.2, 330.0)
    params = TranscribeParams(audio=clip, language="en", prompt="سلمى ويوسف في المحطة")

    async def run():
        return [e async for e in eng.transcribe(params)]

    final = loop.run_until_complete(run())[-1]
    instruction, context = eng.text_side.request_prompt("en", params.prompt)
    prompt = make_prompt(clip, eng.text_side, eng.n_window, instruction=instruction, context=context)
    assert (
        final.stats.prompt_tokens
        == len(prompt.input_ids)
        > len(make_prompt(clip, eng.text_side, eng.n_window).input_ids)
    )
    want = _reference_greedy(tiny_checkpoint, prompt, eng.text_side.stop_ids, N_NEW)
    assert list(final.segments[0].tokens) == want
    runner = eng.scheduler.runner
    assert len(runner.seq_buckets) == 2 * len(set(runner.frame_buckets))  # with and without a context


def test_tensor_parallel_engine_matches_reference(tiny_checkpoint):
    """Weights sharded over 2 of the 8 fake CPU devices (tensor axis) decode the same tokens."""
    config = ServerConfig(max_batch=2, max_new_tokens=N_NEW, window_s=4.0, overlap_s=1.0, tensor_parallel=2)
    eng = build_engine(tiny_checkpoint, config)
    clip = _clip(2.7, 410.0)

    async def run():
        await eng.start()
        try:
            return [e async for e in eng.transcribe(TranscribeParams(audio=clip))]
        finally:
            await eng.stop()

    events = asyncio.run(run())
    runner = eng.scheduler.runner
    leaf = runner._state["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert len(leaf.value.sharding.device_set) == 2
    want = _reference_greedy(
        tiny_checkpoint, make_prompt(clip, eng.text_side, eng.n_window), eng.text_side.stop_ids, N_NEW
    )
    assert list(events[-1].segments[0].tokens) == want
