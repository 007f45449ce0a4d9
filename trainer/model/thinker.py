"""The thinker: audio encoder + MoE decoder + lm_head, with audio features spliced into the text.

`Thinker(config, rngs=nnx.Rngs(seed))(batch) -> ThinkerOutput(logits [B,S,V] fp32, router_stats)` where
`batch` is the loader's dict (docs/interfaces.md §1). Keys used: `input_ids`, `token_mask`, `positions`, and
for audio `audio_mel`, `audio_frames`, `audio_tokens`, `audio_offset` (absent or `audio_mel=None` means a
text-only batch).

Splicing: row b's `<|audio_pad|>` ids at text positions audio_offset[b] .. audio_offset[b]+audio_tokens[b]-1
are replaced by that clip's encoder outputs in order, which is what HF's batch-wide `masked_scatter`
does when every row holds exactly its own clip's count of placeholders. HF does not check that count;
we do, twice: `check_audio_placeholders` on the host (called by `__call__` whenever the batch is concrete
and by the trainer before its jitted step), and an in-graph guard that turns a bad row's logits into NaN
(so a bad batch inside jit cannot train silently; the trainer's non-finite skip catches it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trainer.model.audio_encoder import AudioEncoder
from trainer.model.config import ModelConfig
from trainer.model.decoder import TextModel
from trainer.model.geometry import encoder_token_count
from trainer.model.layers import Linear
from trainer.model.sharding import constrain


class ThinkerOutput(NamedTuple):
    """logits [B, S, V] fp32; router_stats: counts, prob_sum [L, E] (over valid tokens), tokens []."""

    logits: jax.Array
    router_stats: dict[str, jax.Array]


class AudioPlaceholderError(ValueError):
    """The `<|audio_pad|>` ids of a row do not match its clip's encoder token count."""


def _is_concrete(x: Any) -> bool:
    """True when the host can read x: not traced, and (for a jax.Array) all of it on this process."""
    if x is None or isinstance(x, jax.core.Tracer):
        return False
    return not isinstance(x, jax.Array) or x.is_fully_addressable


def check_audio_placeholders(batch: dict, config: ModelConfig) -> None:
    """Host-side check that each row's `<|audio_pad|>` run matches its clip.

    Row b must hold exactly audio_tokens[b] placeholders, contiguous from audio_offset[b], and
    audio_tokens[b] must equal encoder_token_count(audio_frames[b]). A text-only batch (no `audio_mel`)
    must hold no placeholder at all.

    Raises:
        AudioPlaceholderError: naming the first bad row.
    """
    ids = np.asarray(batch["input_ids"])
    is_pad = ids == config.tokens.audio_token_id
    counts = is_pad.sum(axis=1)
    if batch.get("audio_mel") is None:
        bad = np.nonzero(counts)[0]
        if bad.size:
            raise AudioPlaceholderError(
                f"row {bad[0]}: {counts[bad[0]]} audio placeholders but no audio in batch"
            )
        return
    frames = np.asarray(batch["audio_frames"])
    tokens = np.asarray(batch["audio_tokens"])
    offsets = np.asarray(batch["audio_offset"])
    expect = encoder_token_count(frames.astype(np.int64), config.audio.n_window)
    mel_frames = np.asarray(batch["audio_mel"]).shape[-1]
    for b in range(ids.shape[0]):
        if frames[b] > mel_frames:
            raise AudioPlaceholderError(f"row {b}: audio_frames {frames[b]} > mel width {mel_frames}")
        if tokens[b] != expect[b]:
            raise AudioPlaceholderError(
                f"row {b}: audio_tokens {tokens[b]} != encoder_token_count({frames[b]}) = {expect[b]}"
            )
        if counts[b] != tokens[b]:
            raise AudioPlaceholderError(
                f"row {b}: {counts[b]} <|audio_pad|> placeholders but the encoder yields {tokens[b]} tokens"
            )
        if tokens[b] and not is_pad[b, offsets[b] : offsets[b] + tokens[b]].all():
            raise AudioPlaceholderError(
                f"row {b}: placeholders are not contiguous from audio_offset {offsets[b]}"
            )


class Thinker(nnx.Module):
    """Qwen3-Omni thinker (audio + text); submodules `audio_tower`, `model`, `lm_head`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        common = dict(rngs=rngs, param_dtype=config.param_dtype, compute_dtype=config.compute_dtype)
        layers = dict(remat=config.remat_policy, unroll=config.unroll_layers)
        self.audio_tower = AudioEncoder(config.audio, **layers, **common)
        self.model = TextModel(config.text, moe_impl=config.moe_impl, **layers, **common)
        t = config.text
        self.lm_head = Linear(
            (t.hidden_size,), (t.vocab_size,), ("embed",), ("vocab",), use_bias=False, **common
        )

    def embed(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Text embeddings with audio spliced in: ([B, S, H], ok [B] = the row passed the in-graph guard)."""
        ids = jnp.asarray(batch["input_ids"])
        x = self.model.embed_tokens(ids)
        is_pad = ids == self.config.tokens.audio_token_id
        if batch.get("audio_mel") is None:
            return x, ~jnp.any(is_pad, axis=1)
        feats, valid = self.audio_tower(jnp.asarray(batch["audio_mel"]), jnp.asarray(batch["audio_frames"]))
        tokens = jnp.asarray(batch["audio_tokens"])
        offset = jnp.asarray(batch["audio_offset"])
        s, ta = ids.shape[1], feats.shape[1]
        idx = jnp.arange(s)[None, :] - offset[:, None]
        in_run = (idx >= 0) & (idx < tokens[:, None])
        gathered = jnp.take_along_axis(feats, jnp.clip(idx, 0, ta - 1)[:, :, None], axis=1)
        x = jnp.where(is_pad[:, :, None], gathered.astype(x.dtype), x)
        ok = jnp.all(is_pad == in_run, axis=1) & (jnp.sum(valid, axis=1) == tokens) & (tokens <= ta)
        return x, ok

    def logits(self, h: jax.Array) -> jax.Array:
        out = self.lm_head(h).astype(jnp.float32)
        return constrain(out, ("batch", "seq", "act_vocab"))

    def __call__(self, batch: dict) -> ThinkerOutput:
        audio_keys = ("audio_frames", "audio_tokens", "audio_offset")
        if _is_concrete(batch.get("input_ids")) and (
            batch.get("audio_mel") is None or all(_is_concrete(batch.get(k)) for k in audio_keys)
        ):
            check_audio_placeholders(batch, self.config)
        x, ok = self.embed(batch)
        token_mask = jnp.asarray(batch["token_mask"]).astype(bool)
        h, stats, _ = self.model(x, jnp.asarray(batch["positions"]), token_mask)
        logits = self.logits(h)
        logits = jnp.where(ok[:, None, None], logits, jnp.nan)
        stats = dict(stats, tokens=jnp.sum(token_mask.astype(jnp.float32)))
        return ThinkerOutput(logits=logits, router_stats=stats)
