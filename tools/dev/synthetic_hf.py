"""Synthetic HF Qwen3-Omni thinker checkpoints: real key names and shapes, random weights, any size.

For tests (tiny) and the conversion-memory benchmark (several GB: real hidden sizes, fewer layers). Tensors
are generated and written one at a time, so making a big checkpoint needs little memory.

    python -m tools.dev.synthetic_hf --out /tmp/hf --preset tiny [--prefix thinker.] [--dtype bf16] [--with-visual]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from tools.hf.layout import leaf_specs
from tools.hf.safetensors_io import DEFAULT_MAX_SHARD_BYTES, PlannedTensor, ShardedWriter

DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32)}


def hf_config_dict(config, *, wrapped: bool = True) -> dict:
    """An HF config.json dict for a `ModelConfig` (``thinker_config`` wrapper like the release, or bare)."""
    t, a, ids = config.text, config.audio, config.tokens
    # Vision ids: the demo tokenizer's (interface 3) for small vocabularies, else the released model's.
    vision = (6, 7, 8, 9) if t.vocab_size <= 1024 else (151652, 151653, 151655, 151656)
    thinker = {
        "model_type": "qwen3_omni_moe_thinker",
        "audio_token_id": ids.audio_token_id,
        "audio_start_token_id": ids.audio_start_token_id,
        "audio_end_token_id": ids.audio_end_token_id,
        # HF reads these even for audio-only input (get_rope_index), so a loadable config needs them.
        "vision_start_token_id": vision[0],
        "vision_end_token_id": vision[1],
        "image_token_id": vision[2],
        "video_token_id": vision[3],
        "position_id_per_seconds": 13,
        "tie_word_embeddings": False,
        "text_config": {
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "num_experts": t.num_experts,
            "num_experts_per_tok": t.num_experts_per_tok,
            "moe_intermediate_size": t.moe_intermediate_size,
            "intermediate_size": t.moe_intermediate_size,
            "norm_topk_prob": t.norm_topk_prob,
            "rms_norm_eps": t.rms_norm_eps,
            "hidden_act": "silu",
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
                "interleaved": True,
                "mrope_interleaved": True,
            },
            "max_position_embeddings": t.max_position_embeddings,
            "router_aux_loss_coef": t.router_aux_loss_coef,
            "eos_token_id": list(ids.eos_token_ids),
            "pad_token_id": ids.pad_token_id,
            "tie_word_embeddings": False,
        },
        "audio_config": {
            "num_mel_bins": a.num_mel_bins,
            "d_model": a.d_model,
            "encoder_layers": a.encoder_layers,
            "encoder_attention_heads": a.encoder_attention_heads,
            "encoder_ffn_dim": a.encoder_ffn_dim,
            "downsample_hidden_size": a.downsample_hidden_size,
            "n_window": a.n_window,
            "n_window_infer": a.n_window_infer,
            "max_source_positions": a.max_source_positions,
            "output_dim": a.output_dim,
            "activation_function": "gelu",
        },
        # A one-block vision tower: HF builds one even for audio-only use; the default is 0.5 B params.
        "vision_config": {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": t.hidden_size,
            "deepstack_visual_indexes": [],
        },
    }
    if not wrapped:
        return thinker
    return {
        "model_type": "qwen3_omni_moe",
        "architectures": ["Qwen3OmniMoeForConditionalGeneration"],
        "thinker_config": thinker,
    }


def visual_tensors(width: int = 32) -> list[tuple[str, tuple[int, ...]]]:
    """A few `visual.*` tensors (the converter must skip them); not the real vision tower."""
    return [
        ("visual.patch_embed.proj.weight", (width, 3, 2, 4, 4)),
        ("visual.blocks.0.attn.qkv.weight", (3 * width, width)),
        ("visual.blocks.0.attn.qkv.bias", (3 * width,)),
        ("visual.merger.ln_q.weight", (width,)),
    ]


def write_synthetic_hf(
    out: str | Path,
    config,
    *,
    prefix: str = "",
    dtype: str = "bf16",
    with_visual: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    seed: int = 0,
    scale: float = 0.05,
) -> Path:
    """Writes config.json and safetensors shards (index when several) for ``config``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = DTYPES[dtype]
    shapes = [(prefix + key, spec.hf_shape) for spec in leaf_specs(config) for _, key in spec.hf_keys()]
    if with_visual:
        shapes += [(prefix + k, s) for k, s in visual_tensors()]
    writer = ShardedWriter(out, [PlannedTensor(k, np_dtype, s) for k, s in shapes], max_shard_bytes)
    rng = np.random.default_rng(seed)
    for key, shape in shapes:
        values = rng.standard_normal(shape, dtype=np.float32) * scale
        if key.endswith(("norm.weight", "layernorm.weight", "ln_post.weight", "ln_q.weight")):
            values += 1.0  # norms near 1, as trained models have
        writer.write(key, values.astype(np_dtype))
        del values
    writer.close()
    config_dict = hf_config_dict(config, wrapped=prefix == "thinker.")
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="tiny", help="trainer model preset (tiny, small, ...)")
    parser.add_argument("--prefix", default="", help="key prefix, e.g. 'thinker.'")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--with-visual", action="store_true")
    args = parser.parse_args(argv)
    from trainer.config import load_experiment

    config = load_experiment(args.preset, []).model
    write_synthetic_hf(args.out, config, prefix=args.prefix, dtype=args.dtype, with_visual=args.with_visual)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
