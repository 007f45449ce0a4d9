"""FLOPs accounting shared by the trainer's MFU gauge and `sawt plan`, plus a table of chip peaks.

MFU = analytic model FLOPs per step / step time / (peak FLOP/s per chip x chips).
"""

from __future__ import annotations

import time
from typing import Any

# Dense bf16 peak FLOP/s per chip (vendor figures). Keys are jax `device_kind` strings.
CHIP_PEAK_FLOPS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,
}
# HBM per chip in bytes, and what XLA budgets of it (aot-tpu.md: 30.75 GiB of 32 on v4).
CHIP_HBM_BYTES: dict[str, float] = {
    "TPU v4": 32 * 2**30,
    "TPU v5 lite": 16 * 2**30,
    "TPU v5": 95 * 2**30,
    "TPU v6 lite": 32 * 2**30,
}
CHIP_HBM_BUDGET_BYTES: dict[str, float] = {"TPU v4": 30.75 * 2**30}

_measured_cpu_peak: float | None = None


def measure_cpu_peak_flops(n: int = 512, repeats: int = 3) -> float:
    """FLOP/s of a float32 n x n matmul on one CPU device (best of ``repeats``): the CPU 'peak'."""
    import jax
    import jax.numpy as jnp

    global _measured_cpu_peak
    if _measured_cpu_peak is None:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        _measured_cpu_peak = 2 * n**3 / best
    return _measured_cpu_peak


def device_peak_flops(device: Any, cpu_peak_flops: float = 0.0) -> float:
    """Peak FLOP/s of one device: the chip table for TPUs; configured or measured for CPU."""
    kind = getattr(device, "device_kind", "cpu")
    if kind in CHIP_PEAK_FLOPS:
        return CHIP_PEAK_FLOPS[kind]
    if getattr(device, "platform", "cpu") == "cpu":
        return cpu_peak_flops or measure_cpu_peak_flops()
    raise ValueError(f"no peak FLOP/s known for device kind {kind!r}; add it to trainer/flops.py")


def _text_flops_per_token(text: Any, seq_len: int) -> float:
    """Forward matmul FLOPs of one token through the decoder (all layers) and the lm_head."""
    from trainer.model.attention import CAUSAL_BLOCK, attention_pairs

    h, hd = text.hidden_size, text.head_dim
    nq, nkv = text.num_attention_heads, text.num_key_value_heads
    projections = 2 * h * hd * (nq + 2 * nkv) + 2 * nq * hd * h
    # Scores and weighted sum against the keys the attention computes (masked ones included): per block of
    # CAUSAL_BLOCK queries, every key up to the block's end (`local_attention`), averaged over the row.
    keys = attention_pairs(seq_len, seq_len, CAUSAL_BLOCK, None, 0) / seq_len
    attention = 4 * keys * nq * hd
    router = 2 * h * text.num_experts
    experts = text.num_experts_per_tok * 3 * 2 * h * text.moe_intermediate_size  # SwiGLU: gate, up, down
    per_layer = projections + attention + router + experts
    return text.num_hidden_layers * per_layer + 2 * h * text.vocab_size


def _audio_flops_per_row(audio: Any, frames: int, clips: int = 1) -> float:
    """Forward matmul FLOPs of the audio encoder on one batch row of ``frames`` mel frames.

    The convs run on the row's chunk slots (`chunk_slots`: one clip per row needs ceil(frames / 100); packed
    rows get 10% more); the transformer runs on the row's token stream (13 per 100 frames) with attention per
    block of stream tokens over the keys one window reaches from it (`local_attention`; masked within).
    """
    from trainer.model.attention import attention_pairs
    from trainer.model.audio_encoder import ENCODER_BLOCK
    from trainer.model.geometry import chunk_slots

    c, d, ff = audio.downsample_hidden_size, audio.d_model, audio.encoder_ffn_dim
    mel = audio.num_mel_bins
    chunks = chunk_slots(frames, clips, audio.chunk_frames)
    tokens = -(-frames // audio.chunk_frames) * audio.tokens_per_chunk
    # Three 3x3 stride-2 convs over (mel, time) per chunk; each output element costs 2*9*Cin FLOPs.
    t1 = audio.tokens_per_chunk * 4  # time steps after conv1 (ceil halvings of 100 -> 50, 25, 13)
    t2 = audio.tokens_per_chunk * 2
    t3 = audio.tokens_per_chunk
    conv = chunks * (
        2 * 9 * 1 * c * (mel // 2) * t1 + 2 * 9 * c * c * (mel // 4) * t2 + 2 * 9 * c * c * (mel // 8) * t3
    )
    conv_out = 2 * c * (mel // 8) * d * chunks * audio.tokens_per_chunk
    reach = audio.window_tokens - 1
    pairs = attention_pairs(tokens, tokens, ENCODER_BLOCK, reach, reach)
    per_layer = tokens * (4 * 2 * d * d + 2 * 2 * d * ff) + 4 * pairs * d
    heads = tokens * (2 * d * d + 2 * d * audio.output_dim)
    return conv + conv_out + audio.encoder_layers * per_layer + heads


def train_flops_per_step(
    model_config: Any,
    batch: int,
    seq_len: int,
    audio_frames: int,
    frozen: tuple[str, ...] | list[str] = (),
    clips_per_row: int = 1,
) -> float:
    """Analytic matmul FLOPs of one training step over the global batch.

    Formula (documented in docs/training.md): forward FLOPs x 3 (forward, then backward for activation
    and weight gradients). Text: per token, the attention projections, attention over the keys it computes, the
    router, ``top_k`` SwiGLU experts and the lm_head. Audio: the three convs, conv_out, every encoder
    layer and the two output projections, per row (`_audio_flops_per_row`). A frozen audio encoder runs
    forward only (x1): no gradient flows into it. Padding is computed, so it counts.

    Args:
        model_config: a `trainer.model.config.ModelConfig`.
        batch: rows in the global batch.
        seq_len: text tokens per row (the bucket's padded length; padding is computed too).
        audio_frames: mel frames per row (the bucket's padded length).
        frozen: frozen parameter groups (see trainer/optim.py).
        clips_per_row: clip slots per row (packed rows, ``data.max_clips_per_row``); 1 for one clip per row.
    """
    text = batch * seq_len * _text_flops_per_token(model_config.text, seq_len)
    audio = batch * _audio_flops_per_row(model_config.audio, audio_frames, clips_per_row)
    return 3 * text + (1 if "audio_encoder" in frozen else 3) * audio


def param_counts(model_config: Any) -> dict[str, float]:
    """Total and per-token active parameters of the thinker (for reports)."""
    t, a = model_config.text, model_config.audio
    attn = t.hidden_size * t.head_dim * (t.num_attention_heads + 2 * t.num_key_value_heads) * 2
    expert = 3 * t.hidden_size * t.moe_intermediate_size
    layer_total = attn + t.hidden_size * t.num_experts + t.num_experts * expert
    layer_active = attn + t.hidden_size * t.num_experts + t.num_experts_per_tok * expert
    embed = 2 * t.vocab_size * t.hidden_size
    audio = a.encoder_layers * (4 * a.d_model**2 + 2 * a.d_model * a.encoder_ffn_dim) + a.d_model * (
        a.d_model + a.output_dim
    )
    return {
        "total": t.num_hidden_layers * layer_total + embed + audio,
        "active": t.num_hidden_layers * layer_active + embed + audio,
        "audio": audio,
    }
