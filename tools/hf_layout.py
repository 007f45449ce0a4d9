"""Which HF tensors make each leaf of the canonical parameter tree (preamble interface 4), and how.

One `LeafSpec` per canonical leaf: the HF key template (``{l}`` layer, ``{e}`` expert), how the per-layer /
per-expert HF tensors stack, and a transform that is a pure permutation plus reshape, so it inverts exactly
and the HF -> Orbax -> HF round trip is bit-exact. Every dimension comes from the `ModelConfig` built from
the checkpoint's own config.json.

Keys are relative to the thinker (no ``thinker.`` prefix); `tools.convert_hf` adds or strips the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.model.config import ModelConfig

# Top-level groups of a full Qwen3-Omni checkpoint that an ASR thinker does not use.
SKIPPED_GROUPS = ("visual", "talker", "code2wav")


@dataclass(frozen=True)
class LeafSpec:
    """How one canonical leaf is made from HF tensors.

    Attributes:
        path: the leaf's path in the canonical tree, e.g. ``("model", "layers", "mlp", "gate", "kernel")``.
        hf_key: HF key template with ``{l}`` and/or ``{e}``.
        stack: leading stacked dims of the leaf: () unstacked, (L,) per layer, (L, E) per layer and expert.
        hf_shape: shape of one HF tensor.
        perm: axes permutation applied to the HF tensor (torch layout -> JAX layout).
        slice_shape: shape of one slice of the leaf (after the permutation, reshaped).
    """

    path: tuple[str, ...]
    hf_key: str
    stack: tuple[int, ...]
    hf_shape: tuple[int, ...]
    perm: tuple[int, ...]
    slice_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stack + self.slice_shape

    def hf_keys(self) -> list[tuple[tuple[int, ...], str]]:
        """``[(index into the stacked dims, HF key)]`` in stacking order."""
        return [
            (idx, self.hf_key.format(l=idx[0] if idx else 0, e=idx[1] if len(idx) > 1 else 0))
            for idx in np.ndindex(*self.stack)
        ]

    def to_canonical(self, hf: np.ndarray) -> np.ndarray:
        """One HF tensor -> one slice of the leaf."""
        return hf.transpose(self.perm).reshape(self.slice_shape)

    def to_hf(self, piece: np.ndarray) -> np.ndarray:
        """One slice of the leaf -> the HF tensor (exact inverse of `to_canonical`)."""
        permuted = tuple(self.hf_shape[p] for p in self.perm)
        return np.ascontiguousarray(piece.reshape(permuted).transpose(np.argsort(self.perm)))


def leaf_specs(config: ModelConfig) -> list[LeafSpec]:
    """Every leaf of the canonical tree for ``config``, in a stable order (text, audio)."""
    t, a = config.text, config.audio
    L, E, H, V = t.num_hidden_layers, t.num_experts, t.hidden_size, t.vocab_size
    nq, nkv, hd, inter = t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.moe_intermediate_size
    La, D, nh, ff, C = (
        a.encoder_layers,
        a.d_model,
        a.encoder_attention_heads,
        a.encoder_ffn_dim,
        a.downsample_hidden_size,
    )
    ahd, F = a.head_dim, a.num_mel_bins // 8
    ident, tr = (0,), (1, 0)
    specs: list[LeafSpec] = []

    def add(path: str, key: str, stack: tuple[int, ...], hf_shape: tuple[int, ...], perm, out=None) -> None:
        perm = tuple(perm)
        out = tuple(out) if out is not None else tuple(hf_shape[p] for p in perm)
        specs.append(LeafSpec(tuple(path.split("/")), key, stack, tuple(hf_shape), perm, out))

    text_layer = "model.layers.{l}."
    add("model/embed_tokens/embedding", "model.embed_tokens.weight", (), (V, H), (0, 1))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        add(f"model/layers/{norm}/scale", f"{text_layer}{norm}.weight", (L,), (H,), ident)
    add(
        "model/layers/self_attn/q_proj/kernel",
        text_layer + "self_attn.q_proj.weight",
        (L,),
        (nq * hd, H),
        tr,
        (H, nq, hd),
    )
    for proj in ("k_proj", "v_proj"):
        add(
            f"model/layers/self_attn/{proj}/kernel",
            f"{text_layer}self_attn.{proj}.weight",
            (L,),
            (nkv * hd, H),
            tr,
            (H, nkv, hd),
        )
    add(
        "model/layers/self_attn/o_proj/kernel",
        text_layer + "self_attn.o_proj.weight",
        (L,),
        (H, nq * hd),
        tr,
        (nq, hd, H),
    )
    for norm in ("q_norm", "k_norm"):
        add(
            f"model/layers/self_attn/{norm}/scale", f"{text_layer}self_attn.{norm}.weight", (L,), (hd,), ident
        )
    add("model/layers/mlp/gate/kernel", text_layer + "mlp.gate.weight", (L,), (E, H), tr)
    expert = text_layer + "mlp.experts.{e}."
    for proj in ("gate_proj", "up_proj"):
        add(f"model/layers/mlp/experts/{proj}", f"{expert}{proj}.weight", (L, E), (inter, H), tr)
    add("model/layers/mlp/experts/down_proj", expert + "down_proj.weight", (L, E), (H, inter), tr)
    add("model/norm/scale", "model.norm.weight", (), (H,), ident)
    add("lm_head/kernel", "lm_head.weight", (), (V, H), tr)

    conv = (2, 3, 1, 0)  # torch [out, in, kh, kw] -> [kh, kw, in, out]
    for i, cin in ((1, 1), (2, C), (3, C)):
        add(f"audio_tower/conv2d{i}/kernel", f"audio_tower.conv2d{i}.weight", (), (C, cin, 3, 3), conv)
        add(f"audio_tower/conv2d{i}/bias", f"audio_tower.conv2d{i}.bias", (), (C,), ident)
    add("audio_tower/conv_out/kernel", "audio_tower.conv_out.weight", (), (D, C * F), tr)
    audio_layer = "audio_tower.layers.{l}."
    for proj in ("q_proj", "k_proj", "v_proj"):
        add(
            f"audio_tower/layers/self_attn/{proj}/kernel",
            f"{audio_layer}self_attn.{proj}.weight",
            (La,),
            (D, D),
            tr,
            (D, nh, ahd),
        )
        add(
            f"audio_tower/layers/self_attn/{proj}/bias",
            f"{audio_layer}self_attn.{proj}.bias",
            (La,),
            (D,),
            ident,
            (nh, ahd),
        )
    add(
        "audio_tower/layers/self_attn/out_proj/kernel",
        audio_layer + "self_attn.out_proj.weight",
        (La,),
        (D, D),
        tr,
        (nh, ahd, D),
    )
    add(
        "audio_tower/layers/self_attn/out_proj/bias",
        audio_layer + "self_attn.out_proj.bias",
        (La,),
        (D,),
        ident,
    )
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        add(f"audio_tower/layers/{norm}/scale", f"{audio_layer}{norm}.weight", (La,), (D,), ident)
        add(f"audio_tower/layers/{norm}/bias", f"{audio_layer}{norm}.bias", (La,), (D,), ident)
    add("audio_tower/layers/fc1/kernel", audio_layer + "fc1.weight", (La,), (ff, D), tr)
    add("audio_tower/layers/fc1/bias", audio_layer + "fc1.bias", (La,), (ff,), ident)
    add("audio_tower/layers/fc2/kernel", audio_layer + "fc2.weight", (La,), (D, ff), tr)
    add("audio_tower/layers/fc2/bias", audio_layer + "fc2.bias", (La,), (D,), ident)
    add("audio_tower/ln_post/scale", "audio_tower.ln_post.weight", (), (D,), ident)
    add("audio_tower/ln_post/bias", "audio_tower.ln_post.bias", (), (D,), ident)
    add("audio_tower/proj1/kernel", "audio_tower.proj1.weight", (), (D, D), tr)
    add("audio_tower/proj1/bias", "audio_tower.proj1.bias", (), (D,), ident)
    add("audio_tower/proj2/kernel", "audio_tower.proj2.weight", (), (H, D), tr)
    add("audio_tower/proj2/bias", "audio_tower.proj2.bias", (), (H,), ident)
    return specs
