"""Packed rows (several clips per row) give every clip exactly what it gets alone: logits, losses, gradients.

The model side of packing (interfaces §1): segment ids, per-clip positions, clip slots [B, C] in the audio
arrays. The golden tiny thinkers (O(1) random weights) make every check sensitive; tiny_b's attention window
is 4 s, so the 9.37 s clip spans three encoder windows (tiny_a's 8 s window: two).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model.helpers import CLIP_ORDER, forward, golden_model, mel, reference
from tools.dev.hf_reference.make_goldens import waveform
from trainer.data.audio import log_mel
from trainer.model.attention import causal_mask, dot_attention, local_attention
from trainer.model.audio_encoder import clip_layout, window_mask
from trainer.model.config import AudioConfig
from trainer.model.geometry import chunk_slots, encoder_token_count
from trainer.model.loss import thinker_loss

# Clip lengths in seconds: under one chunk, odd tails, and 9.37 s (longer than either golden's window).
SECONDS = (0.55, 1.3, 2.0, 3.07, 9.37)
ROWS = ((0, 3), (4, 1, 2), (2, 0, 4, 3, 1))  # 2, 3 and 5 clips per row, in different orders
AUDIO_PAD, IM_END = 5, 2


def _clip(i: int, rng: np.random.Generator) -> dict:
    """Clip i: its log-mel and a prompt + transcript row (random text ids around the audio placeholders)."""
    m = log_mel(waveform(SECONDS[i]))
    n_audio = int(encoder_token_count(m.shape[1]))
    before = rng.integers(10, 250, 3 + i).tolist()
    after = rng.integers(10, 250, 4).tolist()
    transcript = rng.integers(10, 250, 2 + 2 * i).tolist()
    ids = np.asarray([*before, *([AUDIO_PAD] * n_audio), *after, *transcript, IM_END], np.int32)
    loss = np.zeros(ids.size, np.float32)
    loss[len(before) + n_audio + len(after) - 1 : ids.size - 1] = 1.0
    return {"mel": m, "ids": ids, "loss": loss, "offset": len(before), "tokens": n_audio}


CLIPS = [_clip(i, np.random.default_rng(100 + i)) for i in range(len(SECONDS))]


def unpacked_batch(clip_ids) -> dict:
    """One clip per row (interfaces §1 without packing), right-padded to common widths."""
    clips = [CLIPS[i] for i in clip_ids]
    s = max(c["ids"].size for c in clips) + 3
    f = -(-max(c["mel"].shape[1] for c in clips) // 100) * 100
    b = len(clips)
    out = _empty(b, s, f)
    for r, c in enumerate(clips):
        n, nf = c["ids"].size, c["mel"].shape[1]
        out["input_ids"][r, :n] = c["ids"]
        out["targets"][r, : n - 1] = c["ids"][1:]
        out["loss_mask"][r, :n] = c["loss"]
        out["token_mask"][r, :n] = True
        out["positions"][r, :n] = np.arange(n)
        out["audio_mel"][r, :, :nf] = c["mel"]
    out["audio_frames"] = np.array([c["mel"].shape[1] for c in clips], np.int32)
    out["audio_tokens"] = np.array([c["tokens"] for c in clips], np.int32)
    out["audio_offset"] = np.array([c["offset"] for c in clips], np.int32)
    return out


def packed_batch(rows, slots: int = 6) -> tuple[dict, list[list[tuple[int, int, int]]]]:
    """Rows of several clips end to end (tokens and mel), and per row the (clip, start, length) of each."""
    s = max(sum(CLIPS[i]["ids"].size for i in row) for row in rows) + 5
    frames = max(sum(CLIPS[i]["mel"].shape[1] for i in row) for row in rows)
    f = -(-frames // 100) * 100
    out = _empty(len(rows), s, f)
    out["segment_ids"] = np.zeros((len(rows), s), np.int32)
    for key in ("audio_frames", "audio_tokens", "audio_offset"):
        out[key] = np.zeros((len(rows), slots), np.int32)
    spans = []
    for r, row in enumerate(rows):
        t = fr = 0
        spans.append([])
        for k, i in enumerate(row):
            c = CLIPS[i]
            n, nf = c["ids"].size, c["mel"].shape[1]
            out["input_ids"][r, t : t + n] = c["ids"]
            out["targets"][r, t : t + n - 1] = c["ids"][1:]
            out["loss_mask"][r, t : t + n] = c["loss"]
            out["token_mask"][r, t : t + n] = True
            out["positions"][r, t : t + n] = np.arange(n)
            out["segment_ids"][r, t : t + n] = k + 1
            out["audio_mel"][r, :, fr : fr + nf] = c["mel"]
            out["audio_frames"][r, k] = nf
            out["audio_tokens"][r, k] = c["tokens"]
            out["audio_offset"][r, k] = t + c["offset"]
            spans[-1].append((i, t, n))
            t, fr = t + n, fr + nf
    return out, spans


def _empty(b: int, s: int, f: int) -> dict:
    return {
        "input_ids": np.zeros((b, s), np.int32),
        "targets": np.zeros((b, s), np.int32),
        "loss_mask": np.zeros((b, s), np.float32),
        "token_mask": np.zeros((b, s), bool),
        "positions": np.zeros((b, s), np.int32),
        "audio_mel": np.zeros((b, 128, f), np.float32),
    }


def _nll(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return float(np.sum((logz - picked) * mask))


@pytest.mark.parametrize("name", ["tiny_a", "tiny_b"])
def test_packed_rows_give_each_clip_its_logits_and_loss_alone(name):
    model = golden_model(name)
    alone = unpacked_batch(range(len(CLIPS)))
    want = np.asarray(forward(model, alone).logits)
    packed, spans = packed_batch(ROWS)
    got = np.asarray(forward(model, packed).logits)
    for r, row in enumerate(spans):
        assert len(row) >= 2
        for i, start, n in row:
            ours, theirs = got[r, start : start + n], want[i, :n]
            diff = float(np.max(np.abs(ours - theirs)))
            assert diff <= 1e-5, f"{name} row {r} clip {i} ({SECONDS[i]} s): logits differ by {diff:.3g}"
            sl = slice(start, start + n)
            nll_packed = _nll(got[r, sl], packed["targets"][r, sl], packed["loss_mask"][r, sl])
            nll_alone = _nll(want[i, :n], alone["targets"][i, :n], alone["loss_mask"][i, :n])
            assert abs(nll_packed - nll_alone) <= 1e-5 * max(1.0, abs(nll_alone)), (r, i)
    # A batch of one row is "alone" in the strictest sense: the long clip at its own width, nothing beside it.
    single = unpacked_batch([4])
    one = np.asarray(forward(model, single).logits)[0, : CLIPS[4]["ids"].size]
    np.testing.assert_allclose(one, want[4, : CLIPS[4]["ids"].size], atol=1e-5)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("name", ["tiny_a", "tiny_b"])
def test_packed_encoder_matches_hf_per_clip(name):
    """The three golden clips packed into one row: each clip's encoder tokens equal HF's for that clip."""
    model = golden_model(name)
    ref = reference(name)
    mels = [mel(c) for c in CLIP_ORDER]
    frames = np.array([[m.shape[1] for m in mels]], np.int32)
    width = -(-int(frames.sum()) // 100) * 100
    row = np.zeros((1, 128, width), np.float32)
    row[0, :, : frames.sum()] = np.concatenate(mels, axis=1)
    feats, valid = nnx.jit(lambda m, x, n: m.audio_tower(x, n))(model, row, frames)
    start = 0
    for clip in CLIP_ORDER:
        want = ref[f"{clip}/encoder"]
        got = np.asarray(feats[0, start : start + want.shape[0]])
        assert float(np.max(np.abs(got - want))) <= 1e-4, clip
        start += want.shape[0]
    assert int(np.asarray(valid).sum()) == start


def test_gradients_of_a_packed_batch_equal_the_same_clips_unpacked():
    """Same clips, same loss (token-level CE over the same transcript tokens + aux over the same tokens)."""
    model = golden_model("tiny_b")
    order = [i for row in ROWS for i in row]
    packed, _ = packed_batch(ROWS)
    unpacked = unpacked_batch(order)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def loss_and_grad(params, batch):
        def loss_fn(p):
            out = nnx.merge(graphdef, p, rest)(batch)
            return thinker_loss(out, batch, 0.01)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss_p, m_p), g_p = loss_and_grad(params, packed)
    (loss_u, m_u), g_u = loss_and_grad(params, unpacked)
    assert float(m_p["tokens"]) == float(m_u["tokens"]) > 0
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-6)
    np.testing.assert_allclose(float(m_p["aux"]), float(m_u["aux"]), rtol=1e-6)
    flat_p = jax.tree_util.tree_flatten_with_path(g_p)[0]
    flat_u = jax.tree.leaves(g_u)
    assert len(flat_p) == len(flat_u)
    for (path, a), b in zip(flat_p, flat_u, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        # Relative to the leaf's own scale; the floor covers leaves whose gradient is zero in exact maths
        # (the audio k_proj bias: a constant shift of every key's score) and is rounding noise here.
        diff, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))
        assert diff <= 1e-4 * scale + 1e-8, (jax.tree_util.keystr(path), diff, scale)
    audio = g_u["audio_tower"]["conv2d1"]["kernel"]
    assert float(np.abs(np.asarray(audio)).max()) > 1e-3  # the audio tower is trained through the splice


def test_packed_rows_with_a_bad_clip_are_caught():
    model = golden_model("tiny_a")
    packed, _ = packed_batch(ROWS[:2])
    bad = dict(packed, segment_ids=np.where(packed["segment_ids"] == 2, 1, packed["segment_ids"]))
    from trainer.model.thinker import AudioPlaceholderError, check_audio_placeholders

    with pytest.raises(
        AudioPlaceholderError, match="row 0 clip 1: its placeholders do not lie in one segment"
    ):
        check_audio_placeholders(bad, model.config)
    offsets = packed["audio_offset"].copy()
    offsets[1, 2] -= 1
    with pytest.raises(AudioPlaceholderError, match="row 1 clip 2: placeholders are not contiguous"):
        check_audio_placeholders(dict(packed, audio_offset=offsets), model.config)
    # In the graph the host check cannot run: the bad row's logits become NaN, the other row is untouched.
    logits = np.asarray(nnx.jit(lambda m, b: m(b).logits)(model, dict(packed, audio_offset=offsets)))
    assert np.isnan(logits[1]).all() and np.isfinite(logits[0]).all()


# ------------------------------------------------------------------------------- masks never cross clips


# Fixed array shapes (layouts vary inside them), so each property compiles once, not once per example.
_ROWS, _MAX_CLIPS, _SEQ, _CLIP_FRAMES = 3, 5, 60, 1234
_mask_fn = jax.jit(causal_mask)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=6), min_size=_ROWS, max_size=_ROWS))
def test_decoder_mask_never_crosses_segments(rows):
    """Random packed layouts (segment lengths, empty segments, padding): the mask is causal within a segment,
    never reaches another segment or a pad, and allows every earlier key of the query's own segment."""
    seg = np.zeros((_ROWS, _SEQ), np.int32)
    for b, lengths in enumerate(rows):
        t = 0
        for k, n in enumerate(lengths):
            seg[b, t : t + n] = k + 1
            t += n
    mask = np.asarray(_mask_fn(jnp.asarray(seg > 0), jnp.asarray(seg)))
    q, k = np.arange(_SEQ)[:, None], np.arange(_SEQ)[None, :]
    for b in range(_ROWS):
        allowed = (seg[b][:, None] == seg[b][None, :]) & (seg[b][None, :] > 0) & (k <= q)
        np.testing.assert_array_equal(mask[b], allowed)
        assert not (mask[b] & (seg[b][:, None] != seg[b][None, :])).any()


# Rows of random clip lengths in frames (1 to _MAX_CLIPS clips each), as the packed encoder tests draw them.
_CLIP_ROWS = st.lists(
    st.lists(st.integers(0, _CLIP_FRAMES), min_size=1, max_size=_MAX_CLIPS), min_size=_ROWS, max_size=_ROWS
)


def _frames_array(rows) -> np.ndarray:
    """[_ROWS, _MAX_CLIPS] int32 frames of each row's clips, zero-padded after its last clip."""
    frames = np.zeros((_ROWS, _MAX_CLIPS), np.int32)
    for b, r in enumerate(rows):
        frames[b, : len(r)] = r
    return frames


@functools.cache
def _layout_fn(window_frames: int):
    cfg = AudioConfig(n_window_infer=window_frames)
    f = -(-_MAX_CLIPS * _CLIP_FRAMES // 100) * 100
    nc, ta = chunk_slots(f, _MAX_CLIPS) + _MAX_CLIPS, (f // 100 + _MAX_CLIPS) * 13  # room for any layout

    @jax.jit
    def fn(frames):
        lay = clip_layout(cfg, frames, nc, ta)
        return lay, window_mask(lay)

    return cfg, fn


@settings(max_examples=40, deadline=None)
@given(_CLIP_ROWS, st.sampled_from([200, 800]))
def test_encoder_layout_and_mask_never_cross_clips(rows, window_frames):
    """Random clip lengths laid end to end: each clip gets exactly T(n) stream tokens, in order, from its own
    chunks; attention stays inside (clip, window of that clip); chunk slots cover the clips' frames exactly."""
    cfg, fn = _layout_fn(window_frames)
    c = _MAX_CLIPS
    frames = _frames_array(rows)
    lay, mask = jax.tree.map(np.asarray, fn(jnp.asarray(frames)))
    w = cfg.window_tokens
    for b in range(_ROWS):
        tokens = encoder_token_count(frames[b].astype(np.int64))
        np.testing.assert_array_equal(lay.tokens[b], tokens)
        owner = np.repeat(np.arange(c), tokens)
        assert lay.valid[b].sum() == tokens.sum()
        np.testing.assert_array_equal(lay.clip[b][: tokens.sum()], owner)
        within = np.concatenate([np.arange(t) for t in tokens]) if tokens.sum() else np.zeros(0, int)
        np.testing.assert_array_equal(lay.window[b][: tokens.sum()], within // w)
        # Stream token -> (chunk slot, position): position 13*m + p of the clip's m-th chunk.
        slot, pos = lay.src[b][: tokens.sum()] // 13, lay.src[b][: tokens.sum()] % 13
        np.testing.assert_array_equal(pos, within % 13)
        # The chunk slot of each token starts at the clip's first frame + 100 * (token // 13).
        starts = np.concatenate([[0], np.cumsum(frames[b])[:-1]])
        np.testing.assert_array_equal(lay.chunk_start[b][slot], starts[owner] + 100 * (within // 13))
        assert lay.chunk_len[b].sum() == frames[b].sum()
        crossing = mask[b] & (
            (lay.clip[b][:, None] != lay.clip[b][None, :])
            | (lay.window[b][:, None] != lay.window[b][None, :])
        )
        assert not crossing.any()
        assert not mask[b][:, ~lay.valid[b]].any()


# ------------------------------------------------------------ blocked attention == dense attention


def _qkv(rows: int, seq: int, seed: int = 0):
    """Random q [rows, seq, 4 heads, 8] and k, v [rows, seq, 2 KV heads, 8] (grouped as the decoder's)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(rows, seq, 4, 8)).astype(np.float32)
    k, v = (rng.normal(size=(rows, seq, 2, 8)).astype(np.float32) for _ in range(2))
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


@functools.partial(jax.jit, static_argnames=("block", "reach_back", "reach_ahead"))
def _local_and_dense(q, k, v, mask, block, reach_back, reach_ahead):
    local = local_attention(q, k, v, mask, 0.3, block=block, reach_back=reach_back, reach_ahead=reach_ahead)
    return local, dot_attention(q, k, v, mask, 0.3)


def _assert_same_where_visible(local, dense, mask):
    seen = np.asarray(mask).any(axis=-1)  # queries with a visible key (the others are padding)
    np.testing.assert_allclose(np.asarray(local)[seen], np.asarray(dense)[seen], rtol=1e-5, atol=1e-6)


_CAUSAL_SEQ = 300


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 120), max_size=6), min_size=2, max_size=2))
def test_blocked_causal_attention_equals_dense(rows):
    """The decoder's per-block causal attention (each block of queries over the keys up to its end) gives
    every non-padding query of random packed rows exactly the dense masked attention's output."""
    seg = np.zeros((2, _CAUSAL_SEQ), np.int32)
    for b, lengths in enumerate(rows):
        t = 0
        for k, n in enumerate(lengths):
            seg[b, t : t + n] = k + 1
            t = min(t + n, _CAUSAL_SEQ)
    mask = _mask_fn(jnp.asarray(seg > 0), jnp.asarray(seg))
    q, k, v = _qkv(2, _CAUSAL_SEQ)
    _assert_same_where_visible(*_local_and_dense(q, k, v, mask, 64, None, 0), mask)


@settings(max_examples=20, deadline=None)
@given(_CLIP_ROWS, st.sampled_from([200, 800]))
def test_blocked_window_attention_equals_dense(rows, window_frames):
    """The encoder's per-block stream attention (each block of queries over one window less a token either
    side) matches the dense masked attention on random clip layouts: no window reaches farther than that."""
    cfg, fn = _layout_fn(window_frames)
    frames = _frames_array(rows)
    _, mask = fn(jnp.asarray(frames))
    ta, reach = mask.shape[1], cfg.window_tokens - 1
    far = np.abs(np.arange(ta)[:, None] - np.arange(ta)[None, :]) > reach
    assert not np.asarray(mask)[:, far].any()
    q, k, v = _qkv(_ROWS, ta, seed=1)
    _assert_same_where_visible(*_local_and_dense(q, k, v, mask, 52, reach, reach), mask)
