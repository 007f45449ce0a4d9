"""HF `config.json` (and its sibling files) written from a `ModelConfig`, for exports that have no source config.

The reading direction is `trainer.model.config.ModelConfig.from_hf_config`. What is written here loads in
transformers' Qwen3-Omni classes: the thinker's audio and text configs from the model, a one-block vision
tower (HF builds one even for audio-only use; the default is 0.5 B parameters), and the token ids.
"""

from __future__ import annotations

from typing import Any

# The release's front end (docs/qwen3-omni-thinker.md §6): WhisperFeatureExtractor, 128 mels at 16 kHz.
PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 300,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "padding_side": "right",
    "padding_value": 0.0,
    "dither": 0.0,
    "return_attention_mask": True,
    "processor_class": "Qwen3OmniMoeProcessor",
}


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


def thinker_only(config: dict[str, Any]) -> dict[str, Any]:
    """A full Qwen3-Omni config made to describe a thinker-only checkpoint (no talker, no code2wav weights).

    ``enable_audio_output: false`` is how the release's thinker-only variants (Thinking, Captioner) say it:
    transformers' `Qwen3OmniMoeForConditionalGeneration` then builds the thinker alone.
    """
    if "thinker_config" not in config:
        return dict(config)
    return {**config, "enable_audio_output": False}


def generation_config_dict(model_config) -> dict[str, Any]:
    """A greedy `generation_config.json` with the model's own stop and pad ids."""
    ids = model_config.tokens
    return {
        "eos_token_id": list(ids.eos_token_ids),
        "pad_token_id": ids.pad_token_id,
        "do_sample": False,
    }
