"""The MoE text decoder (`model`): embeddings, scanned pre-norm layers, final norm.

Layer l: h = x + Attn(RMSNorm(x)); out = h + MoE(RMSNorm(h)). Parameters of all layers are stacked on a
leading `layers` axis and the layers run under `jax.lax.scan` (with an optional remat policy), which keeps
compile time flat in depth. The same layer code serves three modes: the full forward (training), prefill
(full forward that also returns each layer's K/V) and one decode step against a KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from trainer.model.attention import TextAttention, causal_mask
from trainer.model.config import TextConfig
from trainer.model.layers import Embed, RMSNorm, scan_layers, unstack_layers
from trainer.model.moe import SparseMoE
from trainer.model.rope import rope_angles
from trainer.model.sharding import constrain


class DecoderLayers(nnx.Module):
    """All decoder layers, parameters stacked [L, ...]."""

    def __init__(self, cfg: TextConfig, *, rngs, param_dtype, compute_dtype, moe_impl):
        st = dict(stack=(cfg.num_hidden_layers,), stack_axes=("layers",))
        norm = dict(eps=cfg.rms_norm_eps, rngs=rngs, param_dtype=param_dtype, **st)
        self.input_layernorm = RMSNorm(cfg.hidden_size, "embed", **norm)
        self.self_attn = TextAttention(
            cfg, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, **st
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, "embed", **norm)
        self.mlp = SparseMoE(
            cfg, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, impl=moe_impl, **st
        )

    def mlp_block(self, h, token_mask):
        y, stats = self.mlp(self.post_attention_layernorm(h), token_mask)
        return constrain(h + y, ("batch", "seq", "act_embed")), stats


class TextModel(nnx.Module):
    """`model`: embed_tokens, layers, norm."""

    def __init__(
        self,
        cfg: TextConfig,
        *,
        rngs,
        param_dtype,
        compute_dtype,
        moe_impl="auto",
        remat="none",
        unroll=False,
    ):
        self.cfg = cfg
        self.remat = remat
        self.unroll = unroll
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype
        )
        self.layers = DecoderLayers(
            cfg, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, moe_impl=moe_impl
        )
        self.norm = RMSNorm(
            cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, rngs=rngs, param_dtype=param_dtype
        )

    def angles(self, positions):
        return rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta, self.cfg.mrope_section)

    def __call__(self, x, positions, token_mask, return_kv: bool = False, segment_ids=None):
        """Full causal forward.

        Args:
            x: input embeddings [B, S, H] (text embeddings with audio spliced in).
            positions: int [B, S] (or [3, B, S]); packed rows restart them at 0 in every segment.
            token_mask: bool [B, S]; keys at False positions are never attended to.
            return_kv: also return the per-layer rotated K and V [L, B, S, Nkv, hd] (prefill).
            segment_ids: int [B, S] of packed rows (None: one sequence per row); a query attends only to
                earlier keys of its own segment, so the clips of a row never see each other. Attention runs
                per block of queries over the keys up to the block's end (`TextAttention.attend_causal`);
                padding positions' outputs are not those of a dense softmax (nothing reads them).

        Returns:
            (hidden [B, S, H] after the final norm, stats {counts, prob_sum: [L, E]}, kv or None).
        """
        angles = self.angles(positions)
        mask = causal_mask(token_mask, segment_ids)
        x = constrain(x, ("batch", "seq", "act_embed"))

        def body(layer: DecoderLayers, h, _):
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(h), angles)
            h = h + layer.self_attn.attend_causal(q, k, v, mask)
            h, stats = layer.mlp_block(h, token_mask)
            return h, (stats, (k, v) if return_kv else None)

        h, (stats, kv) = scan_layers(self.layers, body, x, policy=self.remat, unroll=self.unroll)
        return self.norm(h), stats, kv

    def decode(self, x, positions, cache_k, cache_v, lengths, layers=None):
        """One token per row against a KV cache, updating the cache in place.

        The whole cache rides in the layer loop's carry and each layer writes only its new token's K/V
        (a scatter into the carried buffer), so no layer slices its cache out and re-stacks it: with the
        cache donated by the jitted caller, XLA updates it in place and a step costs no cache copy.

        Args:
            x: [R, 1, H] embeddings of the new tokens, for the first R rows of the cache (R <= B; the
                serving engine runs a prefix of its slots; the other rows are neither read nor written).
            positions: int [R, 1].
            cache_k, cache_v: [L, B, Nkv, T, hd] (heads before slots: the layout XLA:CPU's attention dots
                read as they are; [L, B, T, Nkv, hd] cost two transposed copies of every layer's cache per
                token), or tuples of L per-layer buffers [B, Nkv, T, hd] (with `layers` unstacked: then no
                layer reads its cache through a slice of the stacked buffer, which XLA:CPU copies); slots <
                lengths[b] hold row b's earlier tokens.
            lengths: int [R]: the slot where each row's new K/V is written.
            layers: `unstack_layers(self.layers)`, cut by a caller that decodes in a loop (else the
                stacked layers).

        Returns:
            (hidden [R, 1, H], new cache_k, new cache_v) in the caches' form and shape.
        """
        r = x.shape[0]
        per_layer = isinstance(cache_k, (tuple, list))
        nkv, t, hd = cache_k[0].shape[-3:] if per_layer else cache_k.shape[-3:]
        angles = self.angles(positions)
        mask = (jnp.arange(t)[None, :] <= lengths[:, None])[:, None, :]  # [R, 1, T]
        rows = jnp.arange(r)
        token_mask = jnp.ones((r, 1), bool)

        def attend(layer: DecoderLayers, h, q, ck, cv):  # ck, cv: this layer's [R, Nkv, T, hd]
            h = h + layer.self_attn.attend(
                q, ck.astype(q.dtype), cv.astype(q.dtype), mask, kv_heads_major=True
            )
            return layer.mlp_block(h, token_mask)[0]

        if per_layer:
            ks, vs = list(cache_k), list(cache_v)
            h = x
            for i, layer in enumerate(unstack_layers(self.layers) if layers is None else layers):
                q, k, v = layer.self_attn.qkv(layer.input_layernorm(h), angles)
                ks[i] = ks[i].at[rows, :, lengths].set(k[:, 0].astype(ks[i].dtype))
                vs[i] = vs[i].at[rows, :, lengths].set(v[:, 0].astype(vs[i].dtype))
                h = attend(layer, h, q, ks[i][:r], vs[i][:r])
            return self.norm(h), tuple(ks), tuple(vs)

        def body(layer: DecoderLayers, carry, _):
            h, ck_all, cv_all, i = carry
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(h), angles)
            ck_all = ck_all.at[i, rows, :, lengths].set(k[:, 0].astype(ck_all.dtype))
            cv_all = cv_all.at[i, rows, :, lengths].set(v[:, 0].astype(cv_all.dtype))
            # Read-only views of this layer's first R rows (XLA fuses them into the attention reads).
            ck = jax.lax.dynamic_slice(ck_all, (i, 0, 0, 0, 0), (1, r, nkv, t, hd))[0]
            cv = jax.lax.dynamic_slice(cv_all, (i, 0, 0, 0, 0), (1, r, nkv, t, hd))[0]
            return (attend(layer, h, q, ck, cv), ck_all, cv_all, i + 1), None

        (h, cache_k, cache_v, _), _ = scan_layers(
            self.layers if layers is None else layers,
            body,
            (x, cache_k, cache_v, jnp.int32(0)),
            unroll=self.unroll,
        )
        return self.norm(h), cache_k, cache_v
