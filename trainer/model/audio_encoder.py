"""The audio encoder (`audio_tower`): per-chunk conv front end, windowed bidirectional transformer, projector.

For one clip of n log-mel frames (100 per second):
1. Cut into chunks of 2*n_window frames (1 s) from the clip's first frame, zero-padded to full length. Each
   chunk goes through three 3x3 stride-2 convs with exact (erf) GELU: [128 mel, 100 t] -> [16, 13] x C
   channels. No context crosses a chunk edge.
2. Flatten channel-major (index c*F + f, as HF), `conv_out` to d_model, add the sinusoid table restarted at
   position 0 in every chunk.
3. The first T(n) = encoder_token_count(n) tokens of the clip are valid (full chunks give 13, the tail chunk
   ceil(r/8)). Attention is bidirectional inside windows of `window_tokens` (104 = 8 s) counted from the
   clip's start, and nowhere else (not across windows, not across clips, never to invalid tokens).
4. Pre-LN encoder layers (biases on q, k, v, out), then ln_post -> proj1 -> GELU -> proj2 to the text width.

A batch row holds one clip (``frames`` [B]) or, packed, several clips laid end to end in the row's mel
(``frames`` [B, C], interfaces §1). Either way each clip is encoded exactly as if it were alone:
* its chunks are gathered from the row by the clip's own chunk grid (`_ClipLayout`), into a fixed number of
  chunk slots per row (`trainer.model.geometry.chunk_slots`);
* the valid tokens of all clips of a row are compacted into one token stream per row, clip after clip, so
  the transformer computes no tail-chunk padding;
* attention is masked to (same clip, same window of that clip), so no window crosses a clip; it is computed
  per block of `ENCODER_BLOCK` stream tokens over the keys a window can reach from that block
  (`trainer.model.attention.local_attention`), not over the whole stream.
The output is that stream: row b's clip k owns tokens [tok_start, tok_start + T(n_k)) of it.

Matches HF whenever the batch holds a clip of at least one chunk: HF pads tail chunks to the longest chunk
of the batch, which is a full chunk then. For a batch of clips that are all shorter than 1 s, HF pads
to the longest clip instead, and the last token or two of a clip can differ (the padded conv sees
GELU(bias) instead of zeros); our features do not depend on the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trainer.model.attention import local_attention
from trainer.model.config import AudioConfig
from trainer.model.geometry import chunk_slots
from trainer.model.layers import Conv2d, LayerNorm, Linear, _dtype, scan_layers
from trainer.model.sharding import constrain

# Queries per block of the windowed stream attention (`local_attention`): a block reaches one window less a
# token either side of it, so a 30 s row's 390-token stream computes ~60% of the dense scores.
ENCODER_BLOCK = 52


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """[length, channels] table: sin block then cos block, timescales geometric from 1 to max_timescale."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def gelu(x):
    """Exact GELU, x * Phi(x), written with erf as torch computes it.

    `jax.nn.gelu(approximate=False)` uses erfc, which XLA:CPU lowers to two polynomial branches and a
    select: on the first conv's [chunks, 64, 50, C] output that made the audio encoder's forward and
    backward ~10% slower on CPU (docs/benchmarks.md, "Where the time goes"). Same values to ~1e-6.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2**-0.5)))


class AudioSelfAttention(nnx.Module):
    """q/k/v/out projections of the encoder attention, all with biases."""

    def __init__(self, d, nh, hd, lin):
        self.q_proj = Linear((d,), (nh, hd), ("audio_embed",), ("audio_heads", "head_dim"), **lin)
        self.k_proj = Linear((d,), (nh, hd), ("audio_embed",), ("audio_heads", "head_dim"), **lin)
        self.v_proj = Linear((d,), (nh, hd), ("audio_embed",), ("audio_heads", "head_dim"), **lin)
        self.out_proj = Linear((nh, hd), (d,), ("audio_heads", "head_dim"), ("audio_embed",), **lin)


class AudioLayers(nnx.Module):
    """All encoder layers, parameters stacked [La, ...]."""

    def __init__(self, cfg: AudioConfig, *, rngs, param_dtype, compute_dtype):
        d, nh, hd = cfg.d_model, cfg.encoder_attention_heads, cfg.head_dim
        st = dict(stack=(cfg.encoder_layers,), stack_axes=("layers",))
        lin = dict(rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, use_bias=True, **st)
        self.self_attn = AudioSelfAttention(d, nh, hd, lin)
        norm = dict(eps=cfg.layer_norm_eps, rngs=rngs, param_dtype=param_dtype, **st)
        self.self_attn_layer_norm = LayerNorm(d, "audio_embed", **norm)
        self.final_layer_norm = LayerNorm(d, "audio_embed", **norm)
        self.fc1 = Linear((d,), (cfg.encoder_ffn_dim,), ("audio_embed",), ("audio_mlp",), **lin)
        self.fc2 = Linear((cfg.encoder_ffn_dim,), (d,), ("audio_mlp",), ("audio_embed",), **lin)
        self.scale = hd**-0.5


class ClipLayout(NamedTuple):
    """Where the clips of each row lie, derived in-graph from the clips' frame counts (all int32).

    Per clip [B, C]: ``tokens`` (T(n)), ``tok_start`` (first index in the row's token stream).
    Per chunk slot [B, NC]: ``chunk_start`` (first mel frame in the row), ``chunk_len`` (valid frames; 0 for
    an unused slot). Per stream token [B, TA]: ``src`` (index into the chunk-major conv output),
    ``clip`` (owning clip; C for an unused slot), ``window`` (attention window within its clip), ``valid``.
    """

    tokens: jax.Array
    tok_start: jax.Array
    chunk_start: jax.Array
    chunk_len: jax.Array
    src: jax.Array
    clip: jax.Array
    window: jax.Array
    valid: jax.Array


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
    return jnp.cumsum(x, axis=1) - x


def _owner(ends_bc: jax.Array, n: int) -> jax.Array:
    """For each slot i < n of a row: the clip whose [start, end) range holds it (C when none does)."""
    return jnp.sum(ends_bc[:, None, :] <= jnp.arange(n)[None, :, None], axis=-1)


def clip_layout(cfg: AudioConfig, frames_bc: jax.Array, n_chunks: int, n_tokens: int) -> ClipLayout:
    """The chunk and token tables of rows whose clips (``frames_bc`` [B, C], 0 = empty) lie end to end."""
    cf, tpc, w = cfg.chunk_frames, cfg.tokens_per_chunk, cfg.window_tokens
    frames = frames_bc.astype(jnp.int32)
    chunks = (frames + cf - 1) // cf
    tokens = tpc * (frames // cf) + (frames % cf + 7) // 8  # T(n): three ceil-halvings of the tail
    frame_start, chunk_first, tok_start = (_exclusive_cumsum(x) for x in (frames, chunks, tokens))
    c = frames.shape[1]

    def pick(table, idx):  # table [B, C] at clip idx [B, N] (idx C -> anything; masked by the caller)
        return jnp.take_along_axis(table, jnp.minimum(idx, c - 1), axis=1)

    q_clip = _owner(jnp.cumsum(chunks, axis=1), n_chunks)  # [B, NC]
    q_in_clip = jnp.arange(n_chunks)[None, :] - pick(chunk_first, q_clip)
    chunk_start = pick(frame_start, q_clip) + q_in_clip * cf
    chunk_len = jnp.where(q_clip < c, jnp.clip(pick(frames, q_clip) - q_in_clip * cf, 0, cf), 0)

    t_clip = _owner(jnp.cumsum(tokens, axis=1), n_tokens)  # [B, TA]
    t_in_clip = jnp.arange(n_tokens)[None, :] - pick(tok_start, t_clip)
    src = (pick(chunk_first, t_clip) + t_in_clip // tpc) * tpc + t_in_clip % tpc
    valid = t_clip < c
    return ClipLayout(
        tokens=tokens,
        tok_start=tok_start,
        chunk_start=chunk_start,
        chunk_len=chunk_len,
        src=jnp.where(valid, src, 0),
        clip=t_clip,
        window=t_in_clip // w,
        valid=valid,
    )


def window_mask(layout: ClipLayout) -> jax.Array:
    """bool [B, TA, TA]: bidirectional within (clip, attention window of that clip), valid keys only."""
    same_clip = layout.clip[:, :, None] == layout.clip[:, None, :]
    same_window = layout.window[:, :, None] == layout.window[:, None, :]
    return same_clip & same_window & layout.valid[:, None, :]


class AudioEncoder(nnx.Module):
    """`audio_tower`: mel [B, n_mels, F] + valid frames [B] -> features [B, Ta, output_dim] + valid mask."""

    def __init__(self, cfg: AudioConfig, *, rngs, param_dtype, compute_dtype, remat="none", unroll=False):
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.remat = remat
        self.unroll = unroll
        c, d = cfg.downsample_hidden_size, cfg.d_model
        conv = dict(rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.conv2d1 = Conv2d(1, c, **conv)
        self.conv2d2 = Conv2d(c, c, **conv)
        self.conv2d3 = Conv2d(c, c, **conv)
        f = cfg.num_mel_bins // 8
        self.conv_out = Linear((c * f,), (d,), ("conv_flat",), ("audio_embed",), use_bias=False, **conv)
        self.layers = AudioLayers(cfg, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.ln_post = LayerNorm(d, "audio_embed", eps=cfg.layer_norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.proj1 = Linear((d,), (d,), ("audio_embed",), ("audio_embed",), use_bias=True, **conv)
        self.proj2 = Linear((d,), (cfg.output_dim,), ("audio_embed",), ("embed",), use_bias=True, **conv)

    def num_tokens(self, num_frames: int) -> int:
        """Token slots of a row whose mel has `num_frames` frames (the stream length `__call__` returns)."""
        return -(-num_frames // self.cfg.chunk_frames) * self.cfg.tokens_per_chunk

    def __call__(self, mel_bmf: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Encodes the clips of a batch, each on its own.

        Args:
            mel_bmf: log-mel [B, n_mels, F]; a row's clips lie end to end from frame 0, frames past them are
                ignored (treated as zeros).
            frames: int [B] (one clip per row) or [B, C] (clip slots of packed rows; 0 = empty slot) valid
                frames per clip.

        Returns:
            (features [B, TA, output_dim], valid bool [B, TA]): each row's token stream, TA =
            ceil(F / chunk) * tokens_per_chunk. Clip k of row b owns the next encoder_token_count(frames[b, k])
            tokens after the clips before it (`clip_layout`); the rest of the stream is invalid.
        """
        h, layout = self.encode(mel_bmf, frames)
        return h, layout.valid

    def encode(self, mel_bmf: jax.Array, frames: jax.Array) -> tuple[jax.Array, ClipLayout]:
        """`__call__` returning the whole `ClipLayout` (the thinker needs each clip's stream offset)."""
        cfg = self.cfg
        dt = _dtype(self.compute_dtype)
        frames_bc = frames[:, None] if frames.ndim == 1 else frames
        b, m, f = mel_bmf.shape
        cf, tt = cfg.chunk_frames, cfg.tokens_per_chunk
        nc = chunk_slots(f, frames_bc.shape[1], cf)
        ta = self.num_tokens(f)
        lay = clip_layout(cfg, frames_bc, nc, ta)

        # Each chunk slot gathers its clip's frames (zeros past the clip's end): [B, M, NC*cf].
        mel = jnp.pad(mel_bmf.astype(dt), ((0, 0), (0, 0), (0, cf)))
        t = jnp.arange(cf)[None, None, :]
        idx = jnp.minimum(lay.chunk_start[:, :, None] + t, f + cf - 1).reshape(b, 1, nc * cf)
        chunk_mel = jnp.take_along_axis(mel, idx, axis=2)
        frame_ok = (t < lay.chunk_len[:, :, None]).reshape(b, 1, nc * cf)
        chunk_mel = jnp.where(frame_ok, chunk_mel, 0)
        # [B, M, NC, cf] -> [B*NC, M (height), cf (width), 1]
        x = chunk_mel.reshape(b, m, nc, cf).transpose(0, 2, 1, 3).reshape(b * nc, m, cf, 1)
        x = gelu(self.conv2d1(x))
        x = gelu(self.conv2d2(x))
        x = gelu(self.conv2d3(x))  # [N, F', T', C]
        n, fr, t3, ch = x.shape
        assert t3 == tt, (t3, tt)
        x = x.transpose(0, 2, 3, 1).reshape(n, tt, ch * fr)  # channel-major flatten, as HF
        x = self.conv_out(x)
        x = x + jnp.asarray(sinusoids(tt, cfg.d_model)).astype(dt)[None]
        # Compact the valid tokens of every clip into the row's stream (tail-chunk padding dropped).
        h = jnp.take_along_axis(x.reshape(b, nc * tt, cfg.d_model), lay.src[:, :, None], axis=1)
        h = constrain(h, ("batch", "audio_frames", None))
        mask = window_mask(lay)
        reach = cfg.window_tokens - 1  # a window's last token sees its first, and no farther

        def body(layer: AudioLayers, x, _):
            y = layer.self_attn_layer_norm(x)
            att = layer.self_attn
            q, k, v = att.q_proj(y), att.k_proj(y), att.v_proj(y)
            out = local_attention(
                q, k, v, mask, layer.scale, block=ENCODER_BLOCK, reach_back=reach, reach_ahead=reach
            )
            x = x + att.out_proj(out)
            x = x + layer.fc2(gelu(layer.fc1(layer.final_layer_norm(x))))
            return x, None

        h, _ = scan_layers(self.layers, body, h, policy=self.remat, unroll=self.unroll)
        h = self.proj2(gelu(self.proj1(self.ln_post(h))))
        return h, lay
