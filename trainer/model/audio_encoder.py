"""The audio encoder (`audio_tower`): per-chunk conv front end, windowed bidirectional transformer, projector.

For one clip of n log-mel frames (100 per second):
1. Cut into chunks of 2*n_window frames (1 s), zero-padded to full length. Each chunk goes through three
   3x3 stride-2 convs with exact (erf) GELU: [128 mel, 100 t] -> [16, 13] x C channels. No context crosses
   a chunk edge.
2. Flatten channel-major (index c*F + f, as HF), `conv_out` to d_model, add the sinusoid table restarted at
   position 0 in every chunk.
3. The first T(n) = encoder_token_count(n) tokens of the clip are valid (full chunks give 13, the tail chunk
   ceil(r/8)). Attention is bidirectional inside windows of `window_tokens` (104 = 8 s) counted from the
   clip's start, and nowhere else (not across windows, not across clips, never to invalid tokens).
4. Pre-LN encoder layers (biases on q, k, v, out), then ln_post -> proj1 -> GELU -> proj2 to the text width.

Matches HF whenever the batch holds a clip of at least one chunk: HF pads tail chunks to the longest chunk
of the batch, which is a full chunk then. For a batch of clips that are all shorter than 1 s, HF pads
to the longest clip instead, and the last token or two of a clip can differ (the padded conv sees
GELU(bias) instead of zeros); our features do not depend on the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trainer.model.attention import dot_attention
from trainer.model.config import AudioConfig
from trainer.model.layers import Conv2d, LayerNorm, Linear, _dtype, scan_layers
from trainer.model.sharding import constrain


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
        """Token slots for a padded mel of `num_frames` frames (whole chunks)."""
        return -(-num_frames // self.cfg.chunk_frames) * self.cfg.tokens_per_chunk

    def __call__(self, mel_bmf: jax.Array, frames_b: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Encodes a batch of clips.

        Args:
            mel_bmf: log-mel [B, n_mels, F]; frames past `frames_b` are ignored (treated as zeros).
            frames_b: int [B] valid frames per clip.

        Returns:
            (features [B, Ta, output_dim], valid bool [B, Ta]); Ta = ceil(F/chunk)*tokens_per_chunk and
            row b's valid tokens are its first encoder_token_count(frames_b[b]).
        """
        cfg = self.cfg
        dt = _dtype(self.compute_dtype)
        b, m, f = mel_bmf.shape
        cf = cfg.chunk_frames
        nc = -(-f // cf)
        frame_valid = jnp.arange(nc * cf)[None, :] < frames_b[:, None]
        mel = jnp.pad(mel_bmf.astype(dt), ((0, 0), (0, 0), (0, nc * cf - f)))
        mel = jnp.where(frame_valid[:, None, :], mel, 0)
        # [B, M, nc, cf] -> [B*nc, M (height), cf (width), 1]
        x = mel.reshape(b, m, nc, cf).transpose(0, 2, 1, 3).reshape(b * nc, m, cf, 1)
        x = gelu(self.conv2d1(x))
        x = gelu(self.conv2d2(x))
        x = gelu(self.conv2d3(x))  # [N, F', T', C]
        n, fr, tt, ch = x.shape
        x = x.transpose(0, 2, 3, 1).reshape(n, tt, ch * fr)  # channel-major flatten, as HF
        x = self.conv_out(x)
        x = x + jnp.asarray(sinusoids(tt, cfg.d_model)).astype(dt)[None]
        h = x.reshape(b, nc * tt, cfg.d_model)
        ta = nc * tt

        # Valid tokens: HF's T(n) formula applied chunk by chunk (full chunks 13, the tail ceil(r/8)).
        chunk_len = jnp.clip(frames_b[:, None] - cf * jnp.arange(nc)[None, :], 0, cf)  # [B, nc]
        per_chunk = (chunk_len + 7) // 8  # three ceil-halvings = ceil(len / 8)
        tok_valid = (jnp.arange(tt)[None, None, :] < per_chunk[:, :, None]).reshape(b, ta)

        # Windows of `window_tokens` from each clip's start: pad, fold windows into the batch axis.
        w = cfg.window_tokens
        nw = -(-ta // w)
        pad = nw * w - ta
        hw = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b * nw, w, cfg.d_model)
        kv_valid = jnp.pad(tok_valid, ((0, 0), (0, pad))).reshape(b * nw, w)
        mask = jnp.broadcast_to(kv_valid[:, None, :], (b * nw, w, w))
        hw = constrain(hw, ("batch", "audio_frames", None))

        def body(layer: AudioLayers, x, _):
            y = layer.self_attn_layer_norm(x)
            att = layer.self_attn
            q, k, v = att.q_proj(y), att.k_proj(y), att.v_proj(y)
            x = x + att.out_proj(dot_attention(q, k, v, mask, layer.scale))
            x = x + layer.fc2(gelu(layer.fc1(layer.final_layer_norm(x))))
            return x, None

        hw, _ = scan_layers(self.layers, body, hw, policy=self.remat, unroll=self.unroll)
        h = hw.reshape(b, nw * w, cfg.d_model)[:, :ta]
        h = self.proj2(gelu(self.proj1(self.ln_post(h))))
        return h, tok_valid
