"""Model configs: one sub-config per module, so modules never read a global config.

`ModelConfig` holds an `AudioConfig` (the audio encoder), a `TextConfig` (the MoE decoder) and the token
ids the thinker itself needs. The defaults are the `tiny` test preset; the YAML presets in
`trainer/configs/*.yaml` set every field explicitly. `ModelConfig.from_hf_config` reads a checkpoint's own
`config.json` (with or without the `thinker_config` wrapper): every id and dimension comes from the json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from core.configlib import Frozen
from core.errors import ConfigError
from trainer.model.geometry import tokens_per_chunk

DType = Literal["float32", "bfloat16"]


class AudioConfig(Frozen):
    """The Whisper-style audio encoder (`audio_tower`)."""

    num_mel_bins: int = Field(128, description="Log-mel bins of the input features (conv input height).")
    d_model: int = Field(64, description="Width of the encoder transformer.")
    encoder_layers: int = Field(2, description="Number of encoder transformer layers.")
    encoder_attention_heads: int = Field(4, description="Attention heads per encoder layer.")
    encoder_ffn_dim: int = Field(128, description="Hidden width of the encoder feed-forward block.")
    downsample_hidden_size: int = Field(16, description="Channels of the three stride-2 conv layers.")
    n_window: int = Field(50, description="Half the conv chunk length in mel frames (chunk = 2*n_window).")
    n_window_infer: int = Field(
        800, description="Attention window in mel frames; must be a multiple of 2*n_window (800 = 8 s)."
    )
    max_source_positions: int = Field(1500, description="Rows of the sinusoid position table.")
    output_dim: int = Field(64, description="Width of the encoder output (= text hidden_size).")
    layer_norm_eps: float = Field(1e-5, description="Epsilon of the encoder LayerNorms.")

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        if self.d_model % self.encoder_attention_heads:
            raise ValueError("audio.d_model must be divisible by audio.encoder_attention_heads")
        if self.n_window_infer % (2 * self.n_window):
            raise ValueError("audio.n_window_infer must be a multiple of 2*audio.n_window")
        if self.num_mel_bins % 8:
            raise ValueError("audio.num_mel_bins must be a multiple of 8 (three stride-2 convs)")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def chunk_frames(self) -> int:
        """Mel frames per conv chunk (100 = 1 s)."""
        return 2 * self.n_window

    @property
    def tokens_per_chunk(self) -> int:
        """Encoder tokens a full chunk yields (13 for 100 frames; `geometry.tokens_per_chunk`)."""
        return tokens_per_chunk(self.n_window)

    @property
    def window_tokens(self) -> int:
        """Encoder tokens per attention window (104 for n_window_infer 800)."""
        return self.tokens_per_chunk * (self.n_window_infer // self.chunk_frames)


class TextConfig(Frozen):
    """The MoE text decoder (`model`) and `lm_head`."""

    vocab_size: int = Field(1024, description="Rows of the embedding table and lm_head.")
    hidden_size: int = Field(64, description="Width of the residual stream.")
    num_hidden_layers: int = Field(3, description="Number of decoder layers (all MoE).")
    num_attention_heads: int = Field(4, description="Query heads.")
    num_key_value_heads: int = Field(2, description="Key/value heads (GQA).")
    head_dim: int = Field(
        32, description="Width of one attention head (explicit; may differ from hidden/heads)."
    )
    num_experts: int = Field(8, description="Routed experts per layer (no shared expert).")
    num_experts_per_tok: int = Field(2, description="Experts each token is routed to (top-k).")
    moe_intermediate_size: int = Field(32, description="Hidden width of one SwiGLU expert.")
    norm_topk_prob: bool = Field(True, description="Renormalise the top-k router weights to sum to 1.")
    rms_norm_eps: float = Field(1e-6, description="Epsilon of every RMSNorm in the decoder.")
    rope_theta: float = Field(1_000_000.0, description="RoPE base.")
    mrope_section: tuple[int, ...] = Field(
        (6, 5, 5),
        description="Interleaved MRoPE sections (T, H, W); sums to head_dim/2. Audio+text reduce it to 1-D RoPE.",
    )
    max_position_embeddings: int = Field(65536, description="Longest position the model was trained for.")
    router_aux_loss_coef: float = Field(0.001, description="HF's default weight of the load-balancing loss.")

    @model_validator(mode="after")
    def _check(self) -> TextConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("text.num_attention_heads must be a multiple of text.num_key_value_heads")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("text.num_experts_per_tok exceeds text.num_experts")
        if sum(self.mrope_section) != self.head_dim // 2:
            raise ValueError(
                f"text.mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}"
            )
        return self


class TokenIds(Frozen):
    """The ids the model itself needs (the tokenizer owns the rest)."""

    audio_token_id: int = Field(5, description="`<|audio_pad|>`: placeholder replaced by encoder outputs.")
    audio_start_token_id: int = Field(3, description="`<|audio_start|>`.")
    audio_end_token_id: int = Field(4, description="`<|audio_end|>`.")
    pad_token_id: int = Field(0, description="Id used to pad rows (`<|endoftext|>`).")
    eos_token_ids: tuple[int, ...] = Field((2, 0), description="Ids that end generation (`<|im_end|>`, ...).")


class ModelConfig(Frozen):
    """The whole thinker: audio encoder, MoE decoder, token ids and numerics."""

    name: str = Field("tiny", description="Human-readable name of the architecture preset.")
    audio: AudioConfig = Field(default_factory=AudioConfig, description="Audio encoder.")
    text: TextConfig = Field(default_factory=TextConfig, description="MoE text decoder.")
    tokens: TokenIds = Field(default_factory=TokenIds, description="Token ids the model uses.")
    param_dtype: DType = Field("float32", description="Storage dtype of the parameters.")
    compute_dtype: DType = Field(
        "float32", description="Dtype of matmuls and activations (norms, softmax, router and loss stay fp32)."
    )
    moe_impl: Literal["auto", "ragged", "blocked", "dense"] = Field(
        "auto",
        description="Expert dispatch: 'ragged' (jax.lax.ragged_dot grouped matmuls, native on TPU/GPU) and "
        "'blocked' (block-padded groups, the CPU path) sort tokens by expert so cost scales with top-k; "
        "'dense' runs every expert on every token (test reference); 'auto' = ragged on TPU/GPU, blocked on CPU.",
    )
    remat_policy: Literal["none", "full", "dots", "dots_no_batch"] = Field(
        "none",
        description="Rematerialisation of each scanned layer: none, full (save nothing), dots (save matmul "
        "outputs), dots_no_batch (save matmuls without batch dims).",
    )
    unroll_layers: bool = Field(
        False,
        description="Unroll the layer scan into straight-line code: about 10% faster steps on CPU for small "
        "models, compile time grows with depth (keep False for deep models and TPU).",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.audio.output_dim != self.text.hidden_size:
            raise ValueError(
                "audio.output_dim must equal text.hidden_size (features go straight into the text)"
            )
        for key in ("audio_token_id", "audio_start_token_id", "audio_end_token_id", "pad_token_id"):
            if not 0 <= getattr(self.tokens, key) < self.text.vocab_size:
                raise ValueError(f"tokens.{key} is outside the vocabulary (size {self.text.vocab_size})")
        return self

    @classmethod
    def from_hf_config(
        cls,
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
            raise ConfigError(
                "HF config: dense layers (mlp_only_layers / decoder_sparse_step) are not supported"
            )
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
        return cls(
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
                max_source_positions=need(audio, "max_source_positions", "audio_config"),
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
                max_position_embeddings=text.get("max_position_embeddings", 65536),
                router_aux_loss_coef=text.get("router_aux_loss_coef", 0.001),
            ),
            tokens=tokens,
            **overrides,
        )

    @classmethod
    def from_hf_json(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        """Reads `config.json` (or a directory holding one, with its `generation_config.json` if any) and
        calls `from_hf_config`."""
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
        return cls.from_hf_config(read(path), generation=generation, **overrides)
