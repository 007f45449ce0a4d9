"""Attention: the decoder's causal GQA with per-head q/k RMSNorm and RoPE, and the shared softmax kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from trainer.model.config import TextConfig
from trainer.model.layers import Linear, RMSNorm
from trainer.model.rope import apply_rope
from trainer.model.sharding import constrain

MASK_VALUE = -1e30  # finite, so fully masked rows (padding) give uniform weights instead of NaN
# Queries per block of the decoder's causal attention over a whole sequence (`local_attention`): a block
# skips the keys after it, so a 704-token row computes 58% of the dense scores; smaller blocks skip more but
# run more, smaller matmuls.
CAUSAL_BLOCK = 128


def causal_mask(token_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """bool [B, S, S]: query s may attend to key t iff t <= s, t is a valid token and, for packed rows
    (``segment_ids`` [B, S]), t lies in the same segment as s."""
    s = token_mask.shape[1]
    mask = jnp.tril(jnp.ones((s, s), bool))[None] & token_mask[:, None, :]
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return mask


def dot_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, *, kv_heads_major: bool = False
) -> jax.Array:
    """softmax(q k^T * scale + mask) v with grouped query heads; softmax in fp32.

    Args:
        q: [B, S, Nq, hd]; k, v: [B, T, Nkv, hd] with Nq a multiple of Nkv (query head h uses KV head
            h // (Nq/Nkv), as HF's repeat_kv).
        mask: bool [B, S, T], True where query s may attend to key t.
        scale: multiplier of the scores.
        kv_heads_major: k and v are [B, Nkv, T, hd] (the KV cache's layout, `trainer.model.generate`).

    Returns:
        [B, S, Nq, hd] in q's dtype.
    """
    b, s, nq, hd = q.shape
    nkv = k.shape[1 if kv_heads_major else 2]
    kv = "bktd" if kv_heads_major else "btkd"
    qg = q.reshape(b, s, nkv, nq // nkv, hd)
    scores = jnp.einsum(f"bskgd,{kv}->bkgst", qg, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgst,{kv}->bskgd", probs, v)
    return out.reshape(b, s, nq, hd)


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    scale: float,
    *,
    block: int,
    reach_back: int | None,
    reach_ahead: int,
) -> jax.Array:
    """`dot_attention` computed per block of ``block`` queries over only the keys that block can reach.

    The caller promises that query s attends to no key outside [s - reach_back, s + reach_ahead]
    (``reach_back`` None: any earlier key), i.e. that ``mask`` is False there: causal attention reaches no
    later key, the audio encoder's windows (at most `window_tokens` long) reach at most one window less one
    token either way. Each query block then gets its whole reachable key range in one softmax, so the
    result equals `dot_attention`'s for every query with at least one visible key; skipped keys were
    masked anyway. Why: the dense masked form computes every (query, key) pair of a row, which is all of the
    work for a row of one sequence but mostly masked work for a long row (a packed row of 704 decoder tokens
    computes 704^2 scores per head where causality needs half; an encoder stream of 390 tokens in 104-token
    windows needs a quarter). A query with no visible key at all (padding) averages the values of its block's
    key range instead of all keys: padding outputs differ, and nothing reads them.

    Args:
        q, k, v, mask, scale: as `dot_attention` (k, v [B, T, Nkv, hd]).
        block: queries per block; a row of at most ``block`` queries runs `dot_attention` as it is.
        reach_back: the farthest earlier key a query can see (None: any).
        reach_ahead: the farthest later key a query can see (0: causal).

    Returns:
        [B, S, Nq, hd] in q's dtype.
    """
    spans = query_blocks(q.shape[1], k.shape[1], block, reach_back, reach_ahead)
    if len(spans) == 1:
        return dot_attention(q, k, v, mask, scale)
    out = [
        dot_attention(q[:, a:b], k[:, lo:hi], v[:, lo:hi], mask[:, a:b, lo:hi], scale)
        for (a, b), (lo, hi) in spans
    ]
    return jnp.concatenate(out, axis=1)


def query_blocks(
    s: int, t: int, block: int, reach_back: int | None, reach_ahead: int
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """`local_attention`'s blocks: ((query start, end), (key start, end)) each; one block of all keys when
    ``s <= block``. `trainer.flops` prices attention from the same blocks."""
    if s <= block:
        return [((0, s), (0, t))]
    spans = []
    for start in range(0, s, block):
        end = min(start + block, s)
        lo = 0 if reach_back is None else max(0, start - reach_back)
        spans.append(((start, end), (lo, min(t, end + reach_ahead))))
    return spans


def attention_pairs(s: int, t: int, block: int, reach_back: int | None, reach_ahead: int) -> int:
    """(query, key) score pairs `local_attention` computes per row and head."""
    return sum((b - a) * (hi - lo) for (a, b), (lo, hi) in query_blocks(s, t, block, reach_back, reach_ahead))


class TextAttention(nnx.Module):
    """GQA self-attention of one decoder layer (parameters stacked over layers)."""

    def __init__(self, cfg: TextConfig, *, rngs, param_dtype, compute_dtype, stack=(), stack_axes=()):
        h, nq, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        common = dict(
            rngs=rngs,
            param_dtype=param_dtype,
            compute_dtype=compute_dtype,
            stack=stack,
            stack_axes=stack_axes,
            use_bias=False,
        )
        self.q_proj = Linear((h,), (nq, hd), ("embed",), ("heads", "head_dim"), **common)
        self.k_proj = Linear((h,), (nkv, hd), ("embed",), ("kv_heads", "head_dim"), **common)
        self.v_proj = Linear((h,), (nkv, hd), ("embed",), ("kv_heads", "head_dim"), **common)
        self.o_proj = Linear((nq, hd), (h,), ("heads", "head_dim"), ("embed",), **common)
        norm = dict(
            eps=cfg.rms_norm_eps, rngs=rngs, param_dtype=param_dtype, stack=stack, stack_axes=stack_axes
        )
        self.q_norm = RMSNorm(hd, "head_dim", **norm)
        self.k_norm = RMSNorm(hd, "head_dim", **norm)
        self.scale = hd**-0.5

    def qkv(self, x: jax.Array, angles: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projects x [B, S, H] to rotated q [B,S,Nq,hd], rotated k and v [B,S,Nkv,hd]."""
        q = apply_rope(self.q_norm(self.q_proj(x)), angles)
        k = apply_rope(self.k_norm(self.k_proj(x)), angles)
        v = self.v_proj(x)
        q = constrain(q, ("batch", "seq", "act_heads", None))
        k = constrain(k, ("batch", "seq", "act_kv_heads", None))
        v = constrain(v, ("batch", "seq", "act_kv_heads", None))
        return q, k, v

    def attend(self, q, k, v, mask, kv_heads_major: bool = False) -> jax.Array:
        """Attention over the given keys/values (see `dot_attention`), then o_proj: [B, S, H]."""
        return self.o_proj(dot_attention(q, k, v, mask, self.scale, kv_heads_major=kv_heads_major))

    def attend_causal(self, q, k, v, mask) -> jax.Array:
        """`attend` over the keys of the queries' own sequence under a causal ``mask`` (training, prefill):
        computed per block of queries, each over the keys up to its end only (`local_attention`)."""
        out = local_attention(q, k, v, mask, self.scale, block=CAUSAL_BLOCK, reach_back=None, reach_ahead=0)
        return self.o_proj(out)
