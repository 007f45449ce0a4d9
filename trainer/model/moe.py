"""The sparse MoE block: softmax router, top-k with renormalised weights, SwiGLU experts, no shared expert.

Three dispatch paths compute the same function. The sparse ones sort the T*k (token, choice) pairs by
expert, run grouped matmuls and scatter the results back, so the work is tokens * top_k expert MLPs:
* `ragged`: `jax.lax.ragged_dot`, the native grouped matmul on TPU and GPU. (On CPU, XLA lowers it to a
  masked dense product over every expert, so it is not used there.)
* `blocked`: each expert's group is padded to a multiple of `BLOCK` rows and every block runs one matmul
  against its expert's weights (gathered per block); work = (T*k + E*BLOCK) rows. The CPU path.
* `dense`: every expert runs on every token and the outputs are mixed with the (mostly zero) routing
  weights. Cost scales with the number of experts; it exists as the reference for tests.
`auto` (the default) picks `ragged` on TPU/GPU and `blocked` on CPU.

The expert axis of the weights carries the logical name `expert` (mesh axis `expert`); under GSPMD the
grouped matmuls then run on the gathered expert weights. A shard_map all-to-all expert-parallel dispatch
is future work for the 30B plan.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from trainer.model.config import TextConfig
from trainer.model.layers import _dtype, param


class Router(nnx.Module):
    """Router `gate`: kernel [H, E], no bias."""

    def __init__(self, cfg: TextConfig, *, rngs, param_dtype, stack=(), stack_axes=()):
        self.kernel = param(
            rngs,
            (*stack, cfg.hidden_size, cfg.num_experts),
            (*stack_axes, "embed", "expert"),
            _dtype(param_dtype),
        )


class Experts(nnx.Module):
    """Stacked expert weights: gate_proj, up_proj [E, H, I]; down_proj [E, I, H]."""

    def __init__(self, cfg: TextConfig, *, rngs, param_dtype, stack=(), stack_axes=()):
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        dt = _dtype(param_dtype)
        lead, lead_axes = (*stack, e), (*stack_axes, "expert")
        self.gate_proj = param(rngs, (*lead, h, i), (*lead_axes, "embed", "expert_mlp"), dt)
        self.up_proj = param(rngs, (*lead, h, i), (*lead_axes, "embed", "expert_mlp"), dt)
        self.down_proj = param(rngs, (*lead, i, h), (*lead_axes, "expert_mlp", "embed"), dt)


def route(logits_te: jax.Array, top_k: int, norm_topk_prob: bool):
    """Router probabilities [T, E] (fp32 softmax), top-k weights [T, k] and expert ids [T, k]."""
    probs = jax.nn.softmax(logits_te.astype(jnp.float32), axis=-1)
    weights, ids = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, ids


def experts_dense(x_th, weights_tk, ids_tk, gate_ehi, up_ehi, down_eih):
    """Reference: every expert on every token, mixed by the routing weights. [T, H]."""
    e = gate_ehi.shape[0]
    mix_te = jnp.sum(jax.nn.one_hot(ids_tk, e, dtype=jnp.float32) * weights_tk[..., None], axis=1)
    g = jnp.einsum("th,ehi->tei", x_th, gate_ehi)
    u = jnp.einsum("th,ehi->tei", x_th, up_ehi)
    y = jnp.einsum("tei,eih->teh", jax.nn.silu(g) * u, down_eih)
    return jnp.einsum("teh,te->th", y, mix_te.astype(y.dtype))


def experts_ragged(x_th, weights_tk, ids_tk, gate_ehi, up_ehi, down_eih):
    """Sorted dispatch: group the T*k (token, expert) pairs by expert, run grouped matmuls, scatter back."""
    k = ids_tk.shape[1]
    e = gate_ehi.shape[0]
    flat_ids = ids_tk.reshape(-1)
    order = jnp.argsort(flat_ids, stable=True)
    token_of = order // k
    x_sorted = jnp.take(x_th, token_of, axis=0)
    group_sizes = jnp.bincount(flat_ids, length=e).astype(jnp.int32)
    g = jax.lax.ragged_dot(x_sorted, gate_ehi, group_sizes)
    u = jax.lax.ragged_dot(x_sorted, up_ehi, group_sizes)
    y = jax.lax.ragged_dot(jax.nn.silu(g) * u, down_eih, group_sizes)
    w_sorted = jnp.take(weights_tk.reshape(-1), order).astype(y.dtype)
    return jnp.zeros_like(x_th).at[token_of].add(y * w_sorted[:, None])


BLOCK = 16


def _blocked_matmul(x_mh, w_ehi, group_sizes, block: int = BLOCK):
    """Grouped matmul: rows of x sorted by group; row r of group e gets x[r] @ w[e]. [M, I]."""
    m, h = x_mh.shape
    e = w_ehi.shape[0]
    padded = (group_sizes + block - 1) // block * block
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    start = jnp.cumsum(group_sizes) - group_sizes
    n_blocks = (m + e * (block - 1)) // block + 1  # static upper bound on the padded row count / block
    row_group = jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(m), side="right")
    dest = padded_start[row_group] + jnp.arange(m) - start[row_group]
    xp = jnp.zeros((n_blocks * block, h), x_mh.dtype).at[dest].set(x_mh)
    block_group = jnp.minimum(jnp.searchsorted(padded_end, jnp.arange(n_blocks) * block, side="right"), e - 1)
    yp = jnp.einsum("bmh,bhi->bmi", xp.reshape(n_blocks, block, h), jnp.take(w_ehi, block_group, axis=0))
    return jnp.take(yp.reshape(n_blocks * block, -1), dest, axis=0)


def experts_blocked(x_th, weights_tk, ids_tk, gate_ehi, up_ehi, down_eih):
    """Sorted dispatch with block-padded groups (see module docstring). [T, H]."""
    k = ids_tk.shape[1]
    e = gate_ehi.shape[0]
    flat_ids = ids_tk.reshape(-1)
    order = jnp.argsort(flat_ids, stable=True)
    token_of = order // k
    x_sorted = jnp.take(x_th, token_of, axis=0)
    group_sizes = jnp.bincount(flat_ids, length=e).astype(jnp.int32)
    g = _blocked_matmul(x_sorted, gate_ehi, group_sizes)
    u = _blocked_matmul(x_sorted, up_ehi, group_sizes)
    y = _blocked_matmul(jax.nn.silu(g) * u, down_eih, group_sizes)
    w_sorted = jnp.take(weights_tk.reshape(-1), order).astype(y.dtype)
    return jnp.zeros_like(x_th).at[token_of].add(y * w_sorted[:, None])


def pick_impl(impl: str, platform: str | None = None) -> str:
    """Resolves `auto` for `platform`: ragged_dot where it is native (TPU/GPU), blocked on CPU.

    `platform` defaults to `jax.default_backend()`, the chips this process runs on. A program compiled for
    other chips than the host's (`sawt plan` compiles for TPU on a CPU machine) must pass the target's
    platform, or it would plan the CPU path: the blocked dispatch gathers a copy of its expert's weights for
    every 16-row block (1.5 GiB per matmul per chip for the 30B at 32 x 512 tokens), ragged_dot none.
    """
    if impl != "auto":
        return impl
    return "blocked" if (platform or jax.default_backend()) == "cpu" else "ragged"


IMPLS = {"ragged": experts_ragged, "blocked": experts_blocked, "dense": experts_dense}


class SparseMoE(nnx.Module):
    """`mlp` of a decoder layer: `gate` (router) + `experts`."""

    def __init__(
        self, cfg: TextConfig, *, rngs, param_dtype, compute_dtype, impl="auto", stack=(), stack_axes=()
    ):
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.compute_dtype = compute_dtype
        self.impl = impl
        self.gate = Router(cfg, rngs=rngs, param_dtype=param_dtype, stack=stack, stack_axes=stack_axes)
        self.experts = Experts(cfg, rngs=rngs, param_dtype=param_dtype, stack=stack, stack_axes=stack_axes)

    def __call__(self, x_bsh: jax.Array, token_mask_bs: jax.Array):
        """Returns (output [B, S, H], stats) with per-layer router statistics over valid tokens.

        stats: `counts` [E] top-k assignments, `prob_sum` [E] summed router probabilities.
        """
        b, s, h = x_bsh.shape
        dt = _dtype(self.compute_dtype)
        x = x_bsh.reshape(b * s, h).astype(dt)
        # The router runs in fp32 so expert choice does not flip with the compute dtype.
        logits = jnp.dot(x.astype(jnp.float32), self.gate.kernel[...].astype(jnp.float32))
        probs, weights, ids = route(logits, self.top_k, self.norm_topk_prob)
        weights = weights.astype(dt)
        fn = IMPLS[pick_impl(self.impl)]
        out = fn(
            x,
            weights,
            ids,
            self.experts.gate_proj[...].astype(dt),
            self.experts.up_proj[...].astype(dt),
            self.experts.down_proj[...].astype(dt),
        )
        valid = token_mask_bs.reshape(-1).astype(jnp.float32)
        e = probs.shape[-1]
        counts = jnp.sum(jax.nn.one_hot(ids, e, dtype=jnp.float32) * valid[:, None, None], axis=(0, 1))
        prob_sum = jnp.sum(probs * valid[:, None], axis=0)
        return out.reshape(b, s, h), {"counts": counts, "prob_sum": prob_sum}
