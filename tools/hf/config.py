"""HF `config.json` and its siblings <-> our `ModelConfig`: both directions of the config, beside the key map.

Reading (`model_config_from_hf`, `read_model_config`): every dimension and id comes from the checkpoint's own
files, with or without the `thinker_config` wrapper; the release leaves eos and pad null in config.json, so
they come from `generation_config.json`. Writing (`hf_config_dict` and friends), for an export that has no
source config: what is written loads in transformers' Qwen3-Omni classes (the thinker's audio and text
configs from the model, a one-block vision tower, since HF builds one even for audio-only use; the default is
0.5 B parameters, and the token ids).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from trainer.model.config import AudioConfig, ModelConfig, TextConfig, TokenIds

# Written into a config.json made from scratch (an export with neither --base nor a companion config.json,
# which are copied as they are), with the release's values: transformers' configs carry them, our model reads
# none of them (trainer/model/config.py RETIRED_KEYS).
MAX_POSITION_EMBEDDINGS = 65536  # text_config: the longest position the release advertises
ROUTER_AUX_LOSS_COEF = 0.001  # text_config: HF's load-balancing weight; ours is train.aux_loss_coef
MAX_SOURCE_POSITIONS = 1500  # audio_config: rows of HF's sinusoid table; our encoder sizes it per input

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
            "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
            "router_aux_loss_coef": ROUTER_AUX_LOSS_COEF,
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
            "max_source_positions": MAX_SOURCE_POSITIONS,
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


def model_config_from_hf(
    hf: Mapping[str, Any],
    name: str | None = None,
    generation: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ModelConfig:
    """Builds a config from an HF `config.json` dict (full model or bare thinker).

    Args:
        hf: the parsed json. A full Qwen3-Omni config has `thinker_config`; a bare thinker has
            `text_config` and `audio_config` at the top.
        name: preset name to record; defaults to the json's `_name_or_path` or `model_type`.
        generation: the parsed `generation_config.json`, where the release keeps its eos and pad ids
            (its `config.json` leaves them null); ids in `config.json` win when both are set.
        **overrides: top-level ModelConfig fields to set (e.g. `compute_dtype="bfloat16"`).

    Raises:
        ConfigError: naming the missing or inconsistent json key.
    """
    thinker = hf.get("thinker_config", hf)
    try:
        text, audio = thinker["text_config"], thinker["audio_config"]
    except KeyError as err:
        raise ConfigError(f"HF config has no thinker {err.args[0]}") from err

    def need(d: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in d or d[key] is None:
            raise ConfigError(f"HF config: {where}.{key} is missing")
        return d[key]

    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta"))
    if theta is None:
        raise ConfigError("HF config: text_config.rope_parameters.rope_theta is missing")
    heads = need(text, "num_attention_heads", "text_config")
    # HF falls back to hidden/heads when head_dim is absent; the real checkpoint sets it explicitly.
    head_dim = text.get("head_dim") or need(text, "hidden_size", "text_config") // heads
    if text.get("mlp_only_layers") or text.get("decoder_sparse_step", 1) != 1:
        raise ConfigError("HF config: dense layers (mlp_only_layers / decoder_sparse_step) are not supported")
    if thinker.get("tie_word_embeddings", text.get("tie_word_embeddings", False)):
        raise ConfigError("HF config: tie_word_embeddings=true is not supported (the thinker is untied)")
    generation = generation or {}

    def first_set(key: str) -> Any:
        for source in (text, thinker, generation):
            if source.get(key) is not None:
                return source[key]
        return None

    eos = first_set("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    pad = first_set("pad_token_id")
    audio_start = need(thinker, "audio_start_token_id", "thinker_config")
    tokens = TokenIds(
        audio_token_id=need(thinker, "audio_token_id", "thinker_config"),
        audio_start_token_id=audio_start,
        audio_end_token_id=thinker.get("audio_end_token_id", audio_start + 1),
        pad_token_id=pad if pad is not None else (eos_ids[-1] if eos_ids else 0),
        eos_token_ids=eos_ids,
    )
    return ModelConfig(
        name=name or hf.get("_name_or_path") or hf.get("model_type") or "hf",
        audio=AudioConfig(
            num_mel_bins=need(audio, "num_mel_bins", "audio_config"),
            d_model=need(audio, "d_model", "audio_config"),
            encoder_layers=need(audio, "encoder_layers", "audio_config"),
            encoder_attention_heads=need(audio, "encoder_attention_heads", "audio_config"),
            encoder_ffn_dim=need(audio, "encoder_ffn_dim", "audio_config"),
            downsample_hidden_size=need(audio, "downsample_hidden_size", "audio_config"),
            n_window=need(audio, "n_window", "audio_config"),
            n_window_infer=need(audio, "n_window_infer", "audio_config"),
            output_dim=need(audio, "output_dim", "audio_config"),
        ),
        text=TextConfig(
            vocab_size=need(text, "vocab_size", "text_config"),
            hidden_size=need(text, "hidden_size", "text_config"),
            num_hidden_layers=need(text, "num_hidden_layers", "text_config"),
            num_attention_heads=heads,
            num_key_value_heads=need(text, "num_key_value_heads", "text_config"),
            head_dim=head_dim,
            num_experts=need(text, "num_experts", "text_config"),
            num_experts_per_tok=need(text, "num_experts_per_tok", "text_config"),
            moe_intermediate_size=need(text, "moe_intermediate_size", "text_config"),
            norm_topk_prob=text.get("norm_topk_prob", True),
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            mrope_section=tuple(rope.get("mrope_section", (head_dim // 2, 0, 0))),
        ),
        tokens=tokens,
        **overrides,
    )


def read_model_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """Reads `config.json` (or a directory holding one, with its `generation_config.json` if any) and
    calls `model_config_from_hf`."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"

    def read(file: Path) -> Any:
        try:
            return json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{file}: cannot read HF config: {err}") from err

    generation_file = path.with_name("generation_config.json")
    generation = read(generation_file) if generation_file.is_file() else None
    return model_config_from_hf(read(path), generation=generation, **overrides)
