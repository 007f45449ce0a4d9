"""Model configs: one sub-config per module, so modules never read a global config.

`ModelConfig` holds an `AudioConfig` (the audio encoder), a `TextConfig` (the MoE decoder) and the token
ids the thinker itself needs. The defaults are the `tiny` test preset; the YAML presets in
`trainer/configs/*.yaml` set every field explicitly. A checkpoint's own HF `config.json` is read by
`tools.hf.config.model_config_from_hf` (the HF knowledge lives with the converter): every id and dimension
comes from the json.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.configlib import Frozen
from trainer.model.geometry import tokens_per_chunk

DType = Literal["float32", "bfloat16"]

# Knobs that no code read, removed; a model_config.json written before still loads (`drop_retired`), while a
# YAML preset or override that sets one fails as an unknown key. HF's names for them live in tools/hf/config.py.
RETIRED_KEYS = {
    ("audio", "max_source_positions"): "the encoder builds its sinusoid table for each input's length",
    ("text", "max_position_embeddings"): "RoPE has no position table",
    ("text", "router_aux_loss_coef"): "training weighs the load-balancing loss by train.aux_loss_coef",
}


def drop_retired(data: dict) -> dict:
    """A model config dict (as an older `model_config.json` holds it) without the `RETIRED_KEYS`."""
    out = dict(data)
    for (section, key), _why in RETIRED_KEYS.items():
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


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
        "'dense' runs every expert on every token (test reference); 'auto' = ragged on TPU/GPU; on CPU dense "
        "for a few tokens (decode) and blocked otherwise.",
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
