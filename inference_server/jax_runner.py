"""The thinker as a `ModelRunner`: per-slot prefill into a KV cache, one batched decode step for all slots.

Shapes are static so serving never compiles per request: prefill is compiled once per audio bucket (mel
frames padded to a few sizes up to one model window, the prompt padded to the longest prompt that bucket can
produce), decode once per slot bucket (powers of two up to ``num_slots``). Everything is compiled in the constructor (`warmup`), so the
engine is "ready" only when no request can trigger a compilation.

The model code is `trainer.model` (the one copy), through `trainer.model.generate`'s primitives: `prefill`
fills a one-row cache, `insert_rows` copies it into the request's slot, `decode_step` feeds one token per
slot (inactive slots do not advance).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from trainer.data.audio import FRAMES_PER_SECOND
from trainer.model import generate
from trainer.model.geometry import encoder_token_count
from trainer.model.layers import unstack_layer_states

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
        prompt_overhead: most non-audio prompt tokens (chat markup + instruction), or several such bounds
            (e.g. without and with a context): each gives every audio bucket a prompt width of its own.
        window_s: longest audio per request window.
        max_new_tokens: generation budget per window; sets the cache length with the longest prompt.
        max_seq_len: cache length override.
        mesh: a `jax.sharding.Mesh` over this host's chips (axes `trainer.model.sharding.MESH_AXES`) to
            shard the weights by the trainer's rules (e.g. tensor=4 on a v4-8 host); None: one device.
    """

    def __init__(
        self,
        model_config: Any,
        params: dict,
        *,
        num_slots: int,
        prompt_overhead: int | Sequence[int] = 64,
        window_s: float = 30.0,
        max_new_tokens: int = 448,
        max_seq_len: int | None = None,
        mesh: Any = None,
        warmup: bool = True,
    ):
        from trainer.model.params import load_param_tree
        from trainer.model.thinker import Thinker

        self.config = model_config
        self.num_slots = num_slots
        overheads = sorted({prompt_overhead} if isinstance(prompt_overhead, int) else set(prompt_overhead))
        n_window = model_config.audio.n_window
        # (audio frames, prompt length) buckets, smallest first: per audio bucket, the longest prompt its audio
        # can give with each overhead.
        buckets = sorted(
            (f, _round_up(int(encoder_token_count(f, n_window)) + o, 16))
            for f in audio_buckets(window_s)
            for o in overheads
        )
        self.frame_buckets = [f for f, _ in buckets]
        self.seq_buckets = [s for _, s in buckets]
        self.max_seq_len = max_seq_len or _round_up(max(self.seq_buckets) + max_new_tokens + 1, 64)

        # Built abstractly, then filled with the checkpoint's arrays: the random init of a 30B model would
        # not fit next to its weights.
        model = nnx.eval_shape(lambda: Thinker(model_config, rngs=nnx.Rngs(0)))
        if mesh is not None:
            from trainer.model.sharding import param_shardings

            params = jax.device_put(params, param_shardings(model, mesh))
        load_param_tree(model, params)
        self._graphdef, self._state = nnx.split(model)
        self.mesh = mesh
        # On CPU the decode step runs the layers from weights cut out of the stacked arrays once, here, and
        # from one cache buffer per layer: sliced inside the per-token step, both were copied on every step
        # (as in `generate.greedy_generate`). This holds the decoder's weights twice (the stacked ones serve
        # the prefill). On TPU the scanned stack reads its slices in place.
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        self._layers_graphdef, self._layer_states = None, None
        if model.model.unroll or platform == "cpu":
            with self._on_mesh():
                self._layers_graphdef, self._layer_states = unstack_layer_states(model.model.layers)
        self._per_layer = self._layer_states is not None
        self._cache = generate.init_cache(model_config, num_slots, self.max_seq_len, self._per_layer)
        self._prefill = jax.jit(self._prefill_fn)
        self._insert = jax.jit(generate.insert_rows, donate_argnums=(0,))
        # Decode runs over the smallest power-of-two prefix of slots holding every active row (the scheduler
        # fills the lowest free slot), so a lightly loaded server does not pay for the full batch.
        self.decode_buckets = sorted({min(num_slots, 1 << k) for k in range(num_slots.bit_length() + 1)})
        self._decode = jax.jit(self._decode_fn, donate_argnums=(2,), static_argnums=(5,))
        if warmup:
            self.warmup()

    # ---- jitted pure functions (over trainer.model.generate's KV-cache primitives) -------------------

    def _prefill_fn(self, state, batch):
        model = nnx.merge(self._graphdef, state)
        logits_bv, rows = generate.prefill(model, batch, self.max_seq_len)
        return logits_bv[0], rows

    def _decode_fn(self, state, layer_states, cache, tokens_b, active_b, rows):
        # The full slot cache goes in (donated) and only its first `rows` rows are read and written, in
        # place: no slice of the cache and no write-back per step.
        model = nnx.merge(self._graphdef, state)
        layers = None
        if layer_states is not None:
            layers = [nnx.merge(self._layers_graphdef, s) for s in layer_states]
        return generate.decode_step(model, cache, tokens_b[:rows], active_b[:rows], layers)

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
        }
        with self._on_mesh():
            logits_v, rows = self._prefill(self._state, batch)
            self._cache = self._insert(self._cache, rows, np.array([slot], np.int32))
        return np.asarray(logits_v)

    def decode(self, tokens_b: np.ndarray, active_b: np.ndarray) -> np.ndarray:
        # Inactive rows write at their current length without advancing; their next prefill rewrites them.
        active_b = np.asarray(active_b, bool)
        used = int(np.flatnonzero(active_b).max()) + 1 if active_b.any() else 1
        rows = next(b for b in self.decode_buckets if b >= used)
        with self._on_mesh():
            logits_rv, self._cache = self._decode(
                self._state, self._layer_states, self._cache, np.asarray(tokens_b, np.int32), active_b, rows
            )
        out = np.zeros((self.num_slots, logits_rv.shape[-1]), np.float32)
        out[:rows] = np.asarray(logits_rv)
        return out

    def _on_mesh(self):
        """Activation sharding constraints (`trainer.model.sharding.constrain`) apply under the mesh."""
        import contextlib

        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

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
        for rows in self.decode_buckets:
            active = np.zeros(self.num_slots, bool)
            active[rows - 1] = True
            self.decode(np.zeros(self.num_slots, np.int32), active)
        self._cache = generate.init_cache(self.config, self.num_slots, self.max_seq_len, self._per_layer)
        log.info(
            "compiled prefill buckets %s (frames) and decode for %d slots", self.frame_buckets, self.num_slots
        )
