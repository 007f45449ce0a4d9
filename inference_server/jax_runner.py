"""The thinker as a `ModelRunner`: per-slot prefill into a KV cache, one batched decode step for all slots.

Shapes are static so serving never compiles per request: prefill is compiled once per audio bucket (mel
frames padded to a few sizes up to one model window, the prompt padded to the longest prompt that bucket can
produce), decode once for ``[num_slots]``. Everything is compiled in the constructor (`warmup`), so the
engine is "ready" only when no request can trigger a compilation.

The model code is `trainer.model` (the one copy): `Thinker.embed` splices the audio, `TextModel.__call__`
(``return_kv=True``) prefills, `TextModel.decode` appends one token per row to the cache.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trainer.data.audio import FRAMES_PER_SECOND, encoder_token_count

log = logging.getLogger("sawt.jax_runner")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def audio_buckets(window_s: float, n: int = 3) -> list[int]:
    """Mel-frame buckets: ``n`` sizes up to one window (multiples of 100 frames = 1 s), smallest first."""
    full = _round_up(math.ceil(window_s * FRAMES_PER_SECOND), 100)
    sizes = {_round_up(max(100, full >> k), 100) for k in range(n)}
    return sorted(sizes)


class JaxRunner:
    """A `scheduler.ModelRunner` over a `trainer.model.Thinker`.

    Args:
        model_config: the checkpoint's `ModelConfig`.
        params: the canonical parameter tree (numpy or placed jax arrays).
        num_slots: decode slots (rows of the KV cache).
        prompt_overhead: most non-audio prompt tokens (chat markup + instruction).
        window_s: longest audio per request window.
        max_new_tokens: generation budget per window; sets the cache length with the longest prompt.
        max_seq_len: cache length override.
    """

    def __init__(
        self,
        model_config: Any,
        params: dict,
        *,
        num_slots: int,
        prompt_overhead: int = 64,
        window_s: float = 30.0,
        max_new_tokens: int = 448,
        max_seq_len: int | None = None,
        warmup: bool = True,
    ):
        from trainer.model.params import load_param_tree
        from trainer.model.thinker import Thinker

        self.config = model_config
        self.num_slots = num_slots
        self.frame_buckets = audio_buckets(window_s)
        n_window = model_config.audio.n_window
        # Prompt length bucket per audio bucket: the longest prompt that bucket's audio can give.
        self.seq_buckets = [
            _round_up(int(encoder_token_count(f, n_window)) + prompt_overhead, 16) for f in self.frame_buckets
        ]
        self.max_seq_len = max_seq_len or _round_up(max(self.seq_buckets) + max_new_tokens + 1, 64)

        model = Thinker(model_config, rngs=nnx.Rngs(0))
        load_param_tree(model, params)
        self._graphdef, self._state = nnx.split(model)
        t = model_config.text
        cache_shape = (t.num_hidden_layers, num_slots, self.max_seq_len, t.num_key_value_heads, t.head_dim)
        dtype = jnp.dtype(model_config.compute_dtype)
        self._cache_k = jnp.zeros(cache_shape, dtype)
        self._cache_v = jnp.zeros(cache_shape, dtype)
        self._lengths = np.zeros(num_slots, np.int32)
        self._prefill = jax.jit(self._prefill_fn)
        self._write = jax.jit(self._write_fn, donate_argnums=(0, 1))
        self._decode = jax.jit(self._decode_fn, donate_argnums=(2, 3))
        if warmup:
            self.warmup()

    # ---- jitted pure functions -----------------------------------------------------------------------

    def _prefill_fn(self, state, batch):
        model = nnx.merge(self._graphdef, state)
        x, _ = model.embed(batch)
        h, _, kv = model.model(x, batch["positions"], batch["token_mask"], return_kv=True)
        last = batch["length"][0] - 1
        logits_v = model.logits(h[:, last][:, None])[0, 0]
        k, v = kv  # [L, 1, S, Nkv, hd]
        return logits_v, k[:, 0], v[:, 0]

    @staticmethod
    def _write_fn(cache_k, cache_v, k, v, slot):
        s = k.shape[1]
        cache_k = jax.lax.dynamic_update_slice(cache_k, k[:, None].astype(cache_k.dtype), (0, slot, 0, 0, 0))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v[:, None].astype(cache_v.dtype), (0, slot, 0, 0, 0))
        del s
        return cache_k, cache_v

    def _decode_fn(self, state, tokens_b, cache_k, cache_v, lengths_b):
        model = nnx.merge(self._graphdef, state)
        x = model.model.embed_tokens(tokens_b[:, None])
        h, cache_k, cache_v = model.model.decode(x, lengths_b[:, None], cache_k, cache_v, lengths_b)
        return model.logits(h)[:, 0], cache_k, cache_v

    # ---- ModelRunner ---------------------------------------------------------------------------------

    def _bucket(self, frames: int, prompt_len: int) -> tuple[int, int]:
        for f, s in zip(self.frame_buckets, self.seq_buckets, strict=True):
            if frames <= f and prompt_len <= s:
                return f, s
        raise ValueError(
            f"audio window of {frames} frames / prompt of {prompt_len} tokens exceeds the largest bucket "
            f"({self.frame_buckets[-1]} frames, {self.seq_buckets[-1]} tokens)"
        )

    def prefill(self, slot: int, prompt: Any) -> np.ndarray:
        n = len(prompt.input_ids)
        f_bucket, s_bucket = self._bucket(prompt.audio_frames, n)
        ids = np.zeros((1, s_bucket), np.int32)
        ids[0, :n] = prompt.input_ids
        mel = np.zeros((1, prompt.audio_mel.shape[0], f_bucket), np.float32)
        mel[0, :, : prompt.audio_frames] = prompt.audio_mel[:, : prompt.audio_frames]
        token_mask = np.zeros((1, s_bucket), bool)
        token_mask[0, :n] = True
        batch = {
            "input_ids": ids,
            "token_mask": token_mask,
            "positions": np.where(token_mask, np.arange(s_bucket)[None], 0).astype(np.int32),
            "audio_mel": mel,
            "audio_frames": np.array([prompt.audio_frames], np.int32),
            "audio_tokens": np.array([prompt.audio_tokens], np.int32),
            "audio_offset": np.array([prompt.audio_offset], np.int32),
            "length": np.array([n], np.int32),
        }
        logits_v, k, v = self._prefill(self._state, batch)
        self._cache_k, self._cache_v = self._write(self._cache_k, self._cache_v, k, v, np.int32(slot))
        self._lengths[slot] = n
        return np.asarray(logits_v)

    def decode(self, tokens_b: np.ndarray, active_b: np.ndarray) -> np.ndarray:
        # Inactive rows write garbage at their current length; that row is rewritten by its next prefill.
        lengths_b = np.minimum(self._lengths, self.max_seq_len - 1).astype(np.int32)
        logits_bv, self._cache_k, self._cache_v = self._decode(
            self._state, np.asarray(tokens_b, np.int32), self._cache_k, self._cache_v, lengths_b
        )
        self._lengths += np.asarray(active_b, bool).astype(np.int32)
        return np.asarray(logits_bv)

    def warmup(self) -> None:
        """Compiles every prefill bucket and the decode step, so no request compiles."""
        from types import SimpleNamespace

        pad = self.config.tokens.audio_token_id
        for f, s in zip(self.frame_buckets, self.seq_buckets, strict=True):
            n_audio = int(encoder_token_count(f, self.config.audio.n_window))
            ids = np.concatenate([[1], np.full(n_audio, pad), [2]]).astype(np.int32)
            prompt = SimpleNamespace(
                input_ids=ids,
                audio_mel=np.zeros((self.config.audio.num_mel_bins, f), np.float32),
                audio_frames=f,
                audio_tokens=n_audio,
                audio_offset=1,
            )
            assert len(ids) <= s
            self.prefill(0, prompt)
        self.decode(np.zeros(self.num_slots, np.int32), np.zeros(self.num_slots, bool))
        self._lengths[:] = 0
        log.info(
            "compiled prefill buckets %s (frames) and decode for %d slots", self.frame_buckets, self.num_slots
        )
