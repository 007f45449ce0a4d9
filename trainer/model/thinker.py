"""The thinker: audio encoder + MoE decoder + lm_head, with audio features spliced into the text.

`Thinker(config, rngs=nnx.Rngs(seed))(batch) -> ThinkerOutput(logits [B,S,V] fp32, router_stats)` where
`batch` is the loader's dict (docs/interfaces.md §1). Keys used: `input_ids`, `token_mask`, `positions`,
optionally `segment_ids` (packed rows), and for audio `audio_mel`, `audio_frames`, `audio_tokens`,
`audio_offset` (absent or `audio_mel=None` means a text-only batch). The audio arrays are [B] for one clip
per row or [B, C] for packed rows (clip slots; 0 frames = empty slot).

Splicing: clip k of row b has its `<|audio_pad|>` ids at text positions audio_offset[b,k] ..
audio_offset[b,k]+audio_tokens[b,k]-1; they are replaced by that clip's encoder outputs in order, which is
what HF's batch-wide `masked_scatter` does when every clip holds exactly its own count of placeholders. HF
does not check that count; we do, twice: `check_audio_placeholders` on the host (called by `__call__`
whenever the batch is concrete and by the trainer before its jitted step), and an in-graph guard that turns
a bad row's logits into NaN (so a bad batch inside jit cannot train silently; the trainer's non-finite skip
catches it).

Packed rows (several clips per row, `segment_ids` 1..C on each clip's tokens, 0 on padding, positions
restarting at 0 per clip) give every clip exactly the logits it gets alone: the encoder encodes each clip on
its own (trainer/model/audio_encoder.py), the decoder attends causally within a segment only
(trainer/model/decoder.py), and RoPE sees the per-clip positions.
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
from trainer.model.geometry import chunk_slots, encoder_token_count
from trainer.model.layers import Linear
from trainer.model.sharding import constrain


class ThinkerOutput(NamedTuple):
    """logits [B, S, V] fp32; router_stats: counts, prob_sum [L, E] (over valid tokens), tokens [].

    audio_logits [B, TA, V] fp32: `lm_head` read on each row's audio token stream (the encoder's outputs
    before they are spliced into the text), with audio_valid bool [B, TA]; None for a text-only batch. Only
    the CTC auxiliary loss reads them (trainer/model/loss.py); under jit an unused output costs nothing.
    """

    logits: jax.Array
    router_stats: dict[str, jax.Array]
    audio_logits: jax.Array | None = None
    audio_valid: jax.Array | None = None


class AudioPlaceholderError(ValueError):
    """The `<|audio_pad|>` ids of a row do not match its clip's encoder token count."""


def _is_concrete(x: Any) -> bool:
    """True when the host can read x: not traced, and (for a jax.Array) all of it on this process."""
    if x is None or isinstance(x, jax.core.Tracer):
        return False
    return not isinstance(x, jax.Array) or x.is_fully_addressable


def _per_clip(x: Any) -> np.ndarray:
    """An audio array as [B, C] (one clip per row: C = 1)."""
    x = np.asarray(x)
    return x[:, None] if x.ndim == 1 else x


def check_audio_placeholders(batch: dict, config: ModelConfig) -> None:
    """Host-side check that each clip's `<|audio_pad|>` run matches it.

    Clip k of row b (slots with audio_frames > 0) must have audio_tokens[b,k] == encoder_token_count(frames),
    its placeholders contiguous from audio_offset[b,k], inside one segment of its own (packed rows); a row
    holds no other placeholder, and its clips' frames fit the mel width. A text-only batch (no `audio_mel`)
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
    frames = _per_clip(batch["audio_frames"])
    tokens = _per_clip(batch["audio_tokens"])
    offsets = _per_clip(batch["audio_offset"])
    segments = batch.get("segment_ids")
    segments = None if segments is None else np.asarray(segments)
    expect = encoder_token_count(frames.astype(np.int64), config.audio.n_window)
    mel_frames = np.asarray(batch["audio_mel"]).shape[-1]
    clips = frames.shape[1]
    slots = chunk_slots(mel_frames, clips, config.audio.chunk_frames)
    chunk = config.audio.chunk_frames
    for b in range(ids.shape[0]):

        def name(k: int, b: int = b) -> str:
            return f"row {b}" if clips == 1 else f"row {b} clip {k}"

        if frames[b].sum() > mel_frames:
            raise AudioPlaceholderError(f"row {b}: audio_frames {frames[b].sum()} > mel width {mel_frames}")
        need = int(np.sum(-(-frames[b] // chunk)))
        if need > slots:
            raise AudioPlaceholderError(
                f"row {b}: its clips need {need} conv chunks, more than the {slots} of a {mel_frames}-frame row"
            )
        for k in range(clips):
            if tokens[b, k] != expect[b, k]:
                raise AudioPlaceholderError(
                    f"{name(k)}: audio_tokens {tokens[b, k]} != encoder_token_count({frames[b, k]}) = {expect[b, k]}"
                )
        if counts[b] != tokens[b].sum():
            raise AudioPlaceholderError(
                f"row {b}: {counts[b]} <|audio_pad|> placeholders but the encoder yields {tokens[b].sum()} tokens"
            )
        covered = np.zeros(ids.shape[1], bool)
        seen: set[int] = set()
        for k in np.flatnonzero(tokens[b]):
            span = slice(offsets[b, k], offsets[b, k] + tokens[b, k])
            if (
                offsets[b, k] + tokens[b, k] > ids.shape[1]
                or not is_pad[b, span].all()
                or covered[span].any()
            ):
                raise AudioPlaceholderError(
                    f"{name(k)}: placeholders are not contiguous from audio_offset {offsets[b, k]}"
                )
            covered[span] = True
            if segments is not None:
                seg = np.unique(segments[b, span])
                if seg.size != 1 or seg[0] == 0 or int(seg[0]) in seen:
                    raise AudioPlaceholderError(
                        f"{name(k)}: its placeholders do not lie in one segment of their own (segment_ids {seg})"
                    )
                seen.add(int(seg[0]))


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
        x, ok, _ = self._embed(batch)
        return x, ok

    def _embed(self, batch: dict) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
        """`embed`, plus the audio token streams (features [B, TA, H], valid [B, TA]; None without audio)."""
        ids = jnp.asarray(batch["input_ids"])
        x = self.model.embed_tokens(ids)
        is_pad = ids == self.config.tokens.audio_token_id
        if batch.get("audio_mel") is None:
            return x, ~jnp.any(is_pad, axis=1), None

        def per_clip(key):
            v = jnp.asarray(batch[key])
            return v[:, None] if v.ndim == 1 else v

        frames = per_clip("audio_frames")
        feats, lay = self.audio_tower.encode(jnp.asarray(batch["audio_mel"]), frames)
        tokens, offset = per_clip("audio_tokens"), per_clip("audio_offset")
        s, ta = ids.shape[1], feats.shape[1]
        # Position s of row b takes stream token tok_start[k] + (s - offset[k]) of the clip k whose span holds s.
        rel = jnp.arange(s)[None, :, None] - offset[:, None, :]  # [B, S, C]
        in_span = (rel >= 0) & (rel < tokens[:, None, :])
        src = jnp.sum(jnp.where(in_span, lay.tok_start[:, None, :] + rel, 0), axis=-1)
        gathered = jnp.take_along_axis(feats, jnp.clip(src, 0, ta - 1)[:, :, None], axis=1)
        x = jnp.where(is_pad[:, :, None], gathered.astype(x.dtype), x)
        spans = jnp.sum(in_span, axis=-1)
        ok = (
            jnp.all(is_pad == (spans == 1), axis=1)
            & jnp.all(spans <= 1, axis=1)
            & jnp.all(tokens == lay.tokens, axis=1)
            & (jnp.sum(lay.valid, axis=1) == jnp.sum(tokens, axis=1))
        )
        return x, ok, (feats, lay.valid)

    def logits(self, h: jax.Array) -> jax.Array:
        out = self.lm_head(h).astype(jnp.float32)
        return constrain(out, ("batch", "seq", "act_vocab"))

    def __call__(self, batch: dict) -> ThinkerOutput:
        audio_keys = ("audio_frames", "audio_tokens", "audio_offset")
        if _is_concrete(batch.get("input_ids")) and (
            batch.get("audio_mel") is None or all(_is_concrete(batch.get(k)) for k in audio_keys)
        ):
            check_audio_placeholders(batch, self.config)
        x, ok, audio = self._embed(batch)
        token_mask = jnp.asarray(batch["token_mask"]).astype(bool)
        segments = batch.get("segment_ids")
        segments = None if segments is None else jnp.asarray(segments)
        h, stats, _ = self.model(x, jnp.asarray(batch["positions"]), token_mask, segment_ids=segments)
        logits = self.logits(h)
        logits = jnp.where(ok[:, None, None], logits, jnp.nan)
        stats = dict(stats, tokens=jnp.sum(token_mask.astype(jnp.float32)))
        if audio is None:
            return ThinkerOutput(logits=logits, router_stats=stats)
        feats, valid = audio
        return ThinkerOutput(logits, stats, audio_logits=self.logits(feats), audio_valid=valid)
