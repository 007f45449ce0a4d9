"""Rotary position embedding of the text decoder ("rotate_half" layout, HF Qwen3).

Qwen3-Omni uses *interleaved MRoPE*: positions come in 3 rows (T, H, W) and frequency index i takes its
angle from row H when i % 3 == 1 and i < 3*section[1], from row W when i % 3 == 2 and i < 3*section[2],
and from row T otherwise. For audio and text every row holds the same position (HF's `get_rope_index`
copies cumsum(mask)-1 into all three rows), so whichever row a frequency reads, the angle is
position * inv_freq[i]: interleaved MRoPE reduces exactly to ordinary 1-D RoPE. `rope_angles` takes either
1-D positions [B, S] (the ASR path) or 3-row positions [3, B, S] (implemented for completeness and used by
the test that checks the reduction).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2i/head_dim) for i < head_dim/2, fp32 (HF's default RoPE)."""
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)


def rope_angles(
    positions: jax.Array, head_dim: int, theta: float, mrope_section: Sequence[int] | None = None
) -> jax.Array:
    """Per-frequency angles [B, S, head_dim/2] in fp32.

    Args:
        positions: int [B, S] (1-D RoPE) or [3, B, S] (T/H/W rows of interleaved MRoPE).
        head_dim: attention head width.
        theta: RoPE base.
        mrope_section: (T, H, W) frequency counts, needed only for 3-row positions.
    """
    freqs = jnp.asarray(inv_freq(head_dim, theta))
    if positions.ndim == 2:
        return positions.astype(jnp.float32)[..., None] * freqs
    if mrope_section is None:
        raise ValueError("3-row positions need mrope_section")
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [3, B, S, hd/2]
    i = np.arange(head_dim // 2)
    row = np.zeros_like(i)
    row[(i % 3 == 1) & (i < 3 * mrope_section[1])] = 1
    row[(i % 3 == 2) & (i < 3 * mrope_section[2])] = 2
    onehot = jnp.asarray(np.eye(3, dtype=np.float32)[row].T)  # [3, hd/2]: which row feeds frequency i
    return jnp.einsum("rbsi,ri->bsi", angles, onehot)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates x [B, S, N, hd] by angles [B, S, hd/2]: x*cos + rotate_half(x)*sin, in fp32, cast back."""
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.concatenate([cos, cos], axis=-1)
    sin = jnp.concatenate([sin, sin], axis=-1)
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)
