"""KV-cache inference: `prefill`, `decode_step` and `greedy_generate`.

The cache is `KVCache(k, v, lengths)` with k, v [layers, batch, kv_heads, max_len, head_dim] and per-row
`lengths` [batch] (= filled slots = the position of the row's next token), so rows can sit at different
decode steps (the serving engine's continuous batching) while every shape stays static: `decode_step` is
jittable once per (batch, max_len). Prompts must be left-aligned (valid tokens first, padding after),
which is what the loader produces; positions are then the slot indices, as HF's cumsum(mask)-1.

`prefill` and `decode_step` take the NNX model and work eagerly or under `nnx.jit`; `greedy_generate` jits
the whole prompt + decode loop (a `lax.while_loop`, no per-token Python) and caches the compiled function
per model structure and shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trainer.model.config import ModelConfig
from trainer.model.layers import _dtype, unstack_layer_states
from trainer.model.thinker import Thinker, _is_concrete, check_audio_placeholders


class KVCache(NamedTuple):
    """k, v [L, B, Nkv, T, hd], or tuples of L per-layer [B, Nkv, T, hd] (`per_layer_cache`); lengths int32 [B]:
    slots filled per row."""

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    lengths: jax.Array


def init_cache(config: ModelConfig, batch_size: int, max_len: int, per_layer: bool = False) -> KVCache:
    """An empty cache (compute dtype); `per_layer`: one buffer per layer (`per_layer_cache`)."""
    t = config.text
    shape = (t.num_hidden_layers, batch_size, t.num_key_value_heads, max_len, t.head_dim)
    dt = _dtype(config.compute_dtype)
    cache = KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.zeros((batch_size,), jnp.int32))
    return per_layer_cache(cache) if per_layer else cache


def per_layer_cache(cache: KVCache) -> KVCache:
    """The cache as one buffer per layer, for decoding with unstacked layers (`unstack_layers`, CPU).

    A stacked buffer is read through one slice per layer, which XLA:CPU copies on every decode step.
    """
    if isinstance(cache.k, tuple):
        return cache
    return KVCache(tuple(cache.k), tuple(cache.v), cache.lengths)


def insert_rows(cache: KVCache, rows: KVCache, slots: jax.Array) -> KVCache:
    """Copies the rows of a (prefilled) `rows` cache into batch slots `slots` [b] of `cache`.

    Both caches must have the same max_len; either may be stacked or per layer.
    """

    def put(dst, src):
        if isinstance(dst, tuple):
            src = tuple(src) if not isinstance(src, tuple) else src
            return tuple(d.at[slots].set(r.astype(d.dtype)) for d, r in zip(dst, src, strict=True))
        src = jnp.stack(src) if isinstance(src, tuple) else src
        return dst.at[:, slots].set(src.astype(dst.dtype))

    return KVCache(put(cache.k, rows.k), put(cache.v, rows.v), cache.lengths.at[slots].set(rows.lengths))


def prefill(model: Thinker, batch: dict, max_len: int) -> tuple[jax.Array, KVCache]:
    """Runs the prompt and fills a fresh cache.

    Args:
        model: the thinker.
        batch: prompt batch (interface 1 keys `input_ids`, `token_mask`, `positions` and the audio keys);
            each row's valid tokens must come first.
        max_len: cache length (prompt + tokens to generate); >= the prompt width.

    Returns:
        (logits [B, V] fp32 at each row's last valid token, cache with lengths = valid tokens per row).
    """
    ids = jnp.asarray(batch["input_ids"])
    s = ids.shape[1]
    if s > max_len:
        raise ValueError(f"prompt width {s} exceeds cache length {max_len}")
    token_mask = jnp.asarray(batch["token_mask"]).astype(bool)
    x, ok = model.embed(batch)
    h, _, (k, v) = model.model(x, jnp.asarray(batch["positions"]), token_mask, return_kv=True)
    lengths = jnp.sum(token_mask, axis=1).astype(jnp.int32)
    last = jnp.take_along_axis(h, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
    logits = model.logits(last[:, None])[:, 0]
    logits = jnp.where(ok[:, None], logits, jnp.nan)
    # [L, B, S, Nkv, hd] -> the cache's [L, B, Nkv, T, hd]
    pad = ((0, 0), (0, 0), (0, 0), (0, max_len - s), (0, 0))
    k, v = (jnp.pad(jnp.swapaxes(a, 2, 3), pad) for a in (k, v))
    return logits, KVCache(k, v, lengths)


def decode_step(
    model: Thinker, cache: KVCache, tokens: jax.Array, active: jax.Array | None = None, layers=None
) -> tuple[jax.Array, KVCache]:
    """Feeds one token per row, updating the cache in place when the caller donates it.

    Args:
        model: the thinker.
        cache: the KV cache; row b's token goes to slot (and position) cache.lengths[b].
        tokens: int [R] for the first R rows of the cache (R <= B, usually B; the serving engine runs the
            smallest prefix of its slots that holds every active row); rows >= R are left untouched.
        active: bool [R]; inactive rows do not advance their length (their slot is rewritten later).
        layers: the decoder layers unstacked once by a caller that loops (`unstack_layers`); default the
            model's stacked layers.

    Returns:
        (logits [R, V] fp32, updated cache of the same shape).
    """
    r = tokens.shape[0]
    lengths = cache.lengths[:r]
    x = model.model.embed_tokens(tokens[:, None])
    h, k, v = model.model.decode(x, lengths[:, None], cache.k, cache.v, lengths, layers=layers)
    logits = model.logits(h)[:, 0]
    step = jnp.ones_like(lengths) if active is None else active.astype(jnp.int32)
    return logits, KVCache(k, v, cache.lengths.at[:r].add(step))


def _generate(
    graphdef,
    state,
    batch,
    max_new_tokens: int,
    max_len: int,
    stop_ids: tuple[int, ...],
    pad_id: int,
    layer_states: list | None = None,
):
    model = nnx.merge(graphdef, state)
    layers = None
    if layer_states is not None:  # the per-layer weights, cut by `greedy_generate` outside this program
        layers_graphdef = nnx.split(model.model.layers)[0]
        layers = [nnx.merge(layers_graphdef, s) for s in layer_states]
    logits, cache = prefill(model, batch, max_len)
    if layers is not None:
        cache = per_layer_cache(cache)
    b = logits.shape[0]
    stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, tok, out, done, count = carry
        is_stop = jnp.any(tok[:, None] == stop[None, :], axis=1)
        write = ~done & ~is_stop
        out = out.at[:, i].set(jnp.where(write, tok, pad_id))
        count = count + write.astype(jnp.int32)
        done = done | is_stop
        logits, cache = decode_step(model, cache, tok, ~done, layers)
        return i + 1, cache, jnp.argmax(logits, axis=-1).astype(jnp.int32), out, done, count

    init = (
        jnp.int32(0),
        cache,
        jnp.argmax(logits, axis=-1).astype(jnp.int32),
        jnp.full((b, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((b,), bool),
        jnp.zeros((b,), jnp.int32),
    )
    _, _, _, out, _, count = jax.lax.while_loop(cond, body, init)
    return out, count


_generate_jit = jax.jit(_generate, static_argnums=(0, 3, 4, 5, 6))


def greedy_generate(
    model: Thinker,
    batch: dict,
    max_new_tokens: int,
    stop_ids: tuple[int, ...] | list[int] | None = None,
    max_len: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding of up to `max_new_tokens` per row, in one compiled loop.

    Args:
        model: the thinker.
        batch: prompt batch (left-aligned rows; see `prefill`).
        max_new_tokens: tokens to generate at most.
        stop_ids: ids that end a row (default: the config's eos ids); () generates exactly max_new_tokens.
        max_len: cache length; default prompt width + max_new_tokens.

    Returns:
        (ids int32 [B, max_new_tokens], counts int32 [B]): ids[b, :counts[b]] are the generated tokens
        without the stop token; the rest are the pad id.
    """
    cfg = model.config
    stops = tuple(cfg.tokens.eos_token_ids if stop_ids is None else stop_ids)
    width = batch["input_ids"].shape[1]
    # Host checks need the whole batch on this process; a multi-host global batch skips them (the
    # in-graph guard still poisons bad rows).
    if all(_is_concrete(v) for k, v in batch.items() if k != "meta" and v is not None):
        mask = np.asarray(batch["token_mask"]).astype(bool)
        check_audio_placeholders(batch, cfg)
        # Left-aligned rows: no valid token after the first pad.
        if np.any(mask[:, 1:] & ~mask[:, :-1]):
            raise ValueError("greedy_generate needs left-aligned prompts (valid tokens first, then padding)")
    return _generate_jit(
        *generate_args(model, batch, max_new_tokens, stops, max_len or width + max_new_tokens)
    )


def generate_args(model: Thinker, batch: dict, max_new_tokens: int, stops: tuple[int, ...], max_len: int):
    """The arguments of the compiled `_generate_jit` for `greedy_generate` (bench/op_profile.py traces it)."""
    arrays = {k: v for k, v in batch.items() if k != "meta" and v is not None}
    # Unrolled layers (the CPU choice) are cut out of the stacked weights once per call, here, outside the
    # compiled loop, instead of on every token inside it; a scanned stack (TPU) reads its slices in place.
    layers = unstack_layer_states(model.model.layers)[1] if model.model.unroll else None
    graphdef, state = nnx.split(model)
    pad = model.config.tokens.pad_token_id
    return graphdef, state, arrays, max_new_tokens, max_len, stops, pad, layers
