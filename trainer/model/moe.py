"""The sparse MoE block: softmax router, top-k with renormalised weights, SwiGLU experts, no shared expert.

Three dispatch paths compute the same function. The sparse ones sort the T*k (token, choice) pairs by
expert, run grouped matmuls and scatter the results back, so the work is tokens * top_k expert MLPs:
* `ragged`: `jax.lax.ragged_dot`, the native grouped matmul on TPU and GPU. (On CPU, XLA lowers it to a
  masked dense product over every expert, so it is not used there.)
* `blocked`: each expert's group is padded to a multiple of `BLOCK` rows and every block runs one matmul
  against its expert's weights; work = (T*k + E*BLOCK) rows at most. The CPU path for many tokens.
* `dense`: every expert runs on every token and the outputs are mixed with the (mostly zero) routing
  weights. Cost scales with the number of experts; the reference for tests, and on CPU the cheapest path
  for a few tokens (a decode step), where the blocked path's padding and dispatch would cost more.
`auto` (the default) picks `ragged` on TPU/GPU; on CPU `dense` when T*E <= T*k + E*BLOCK/2 rows (a decode
step: its few tokens would mostly be padding), else `blocked`.

The blocked path on CPU, measured on the `small` preset's bench batch (docs/benchmarks.md, "Where the time
goes"): 64-row blocks beat 16-row ones (XLA:CPU's batched matmuls of 16 rows ran at about half the speed of
64-row ones, which outweighs the extra padding); the dispatch and combine are row gathers whose transposes
are gathers too (custom VJPs), and the per-block weights come from a one-hot matmul, so the backward has no
scatter-add, which XLA:CPU runs as a serial loop.

The expert axis of the weights carries the logical name `expert` (mesh axis `expert`); under GSPMD the
grouped matmuls then run on the gathered expert weights. A shard_map all-to-all expert-parallel dispatch
is future work for the 30B plan.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

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
    # Batched over the experts, with the tokens broadcast to each: every expert's [H, I] and [I, H] is then
    # a plain row-major matrix operand. Written "th,ehi->tei", XLA:CPU transposed the stacked weights to
    # [H, E*I] (and [E, H, I] for down_proj) in every call: in a greedy decode loop, every token.
    x_eth = jnp.broadcast_to(x_th[None], (e, *x_th.shape))
    g = jnp.einsum("eth,ehi->eti", x_eth, gate_ehi)
    u = jnp.einsum("eth,ehi->eti", x_eth, up_ehi)
    y = jnp.einsum("eti,eih->eth", jax.nn.silu(g) * u, down_eih)
    return jnp.einsum("eth,te->th", y, mix_te.astype(y.dtype))


def sort_by_expert(ids_tk: jax.Array, num_experts: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The dispatch preamble of the sorted paths: the T*k pairs' expert ids flat (pair j = t*k + c), the
    order that groups them by expert (stable, so a group keeps token order), and each expert's pair count.

    Returns (flat_ids [T*k], order [T*k], sizes [E] int32).
    """
    flat = ids_tk.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    return flat, order, jnp.bincount(flat, length=num_experts).astype(jnp.int32)


def experts_ragged(x_th, weights_tk, ids_tk, gate_ehi, up_ehi, down_eih):
    """Sorted dispatch: group the T*k (token, expert) pairs by expert, run grouped matmuls, scatter back."""
    k = ids_tk.shape[1]
    _, order, group_sizes = sort_by_expert(ids_tk, gate_ehi.shape[0])
    token_of = order // k
    x_sorted = jnp.take(x_th, token_of, axis=0)
    g = jax.lax.ragged_dot(x_sorted, gate_ehi, group_sizes)
    u = jax.lax.ragged_dot(x_sorted, up_ehi, group_sizes)
    y = jax.lax.ragged_dot(jax.nn.silu(g) * u, down_eih, group_sizes)
    w_sorted = jnp.take(weights_tk.reshape(-1), order).astype(y.dtype)
    return jnp.zeros_like(x_th).at[token_of].add(y * w_sorted[:, None])


BLOCK = 64


class BlockLayout(NamedTuple):
    """Where the T*k (token, choice) pairs sit in the expert-sorted, block-padded row layout.

    pos: int [T*k], the padded row of pair j = t*k + c. src: int [R], the pair in padded row r, or T*k
    for a padding row. block_expert: int [R / BLOCK], the expert whose weights block b uses.
    """

    pos: jax.Array
    src: jax.Array
    block_expert: jax.Array


def block_layout(ids_tk: jax.Array, num_experts: int, block: int = BLOCK) -> BlockLayout:
    """Sorts the pairs by expert and pads each expert's group to a multiple of `block` rows.

    The row count R is a static upper bound (T*k + E*(block-1), rounded up to whole blocks); blocks past
    the last group hold only padding rows.
    """
    flat, order, sizes = sort_by_expert(ids_tk, num_experts)
    p, e = flat.shape[0], num_experts
    padded = (sizes + block - 1) // block * block
    padded_end = jnp.cumsum(padded)
    start = jnp.cumsum(sizes) - sizes
    sorted_ids = flat[order]
    dest = (padded_end - padded)[sorted_ids] + jnp.arange(p, dtype=jnp.int32) - start[sorted_ids]
    n_blocks = (p + e * (block - 1)) // block + 1
    pos = jnp.zeros((p,), jnp.int32).at[order].set(dest, unique_indices=True)
    src = jnp.full((n_blocks * block,), p, jnp.int32).at[pos].set(jnp.arange(p, dtype=jnp.int32))
    starts = jnp.arange(n_blocks, dtype=jnp.int32) * block
    block_expert = jnp.minimum(jnp.searchsorted(padded_end, starts, side="right"), e - 1)
    return BlockLayout(pos, src, block_expert.astype(jnp.int32))


def _rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x[idx] by rows, where idx == len(x) selects a zero row (padding)."""
    x_ext = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])
    return x_ext.at[idx].get(mode="promise_in_bounds")


# The dispatch (token rows -> padded rows) and the combine (padded rows -> pair rows) are row gathers whose
# transposes are gathers again, because `pos` and `src` invert each other. Written as custom VJPs so that
# XLA:CPU never runs the scatter-adds that autodiff of a gather produces (serial loops on CPU).


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dispatch(x_th, src_r, pos_p, k: int):
    """Padded row r holds token src_r[r] // k (a zero row for padding). [R, H]."""
    t = x_th.shape[0]
    return _rows(x_th, jnp.where(src_r < t * k, src_r // k, t))


def _dispatch_fwd(x_th, src_r, pos_p, k):
    return _dispatch(x_th, src_r, pos_p, k), pos_p


def _dispatch_bwd(k, pos_p, d_rh):
    # Token t's row went to the k padded rows of its pairs: its cotangent is their sum.
    d_th = d_rh[pos_p].reshape(pos_p.shape[0] // k, k, -1).sum(axis=1)
    return d_th, None, None


_dispatch.defvjp(_dispatch_fwd, _dispatch_bwd)


@jax.custom_vjp
def _combine(y_rh, pos_p, src_r):
    """Pair j's output row, y_rh[pos_p[j]]. [T*k, H]."""
    return y_rh[pos_p]


def _combine_fwd(y_rh, pos_p, src_r):
    return _combine(y_rh, pos_p, src_r), src_r


def _combine_bwd(src_r, d_ph):
    return _rows(d_ph, src_r), None, None


_combine.defvjp(_combine_fwd, _combine_bwd)


def _block_matmul(x_rh, w_ehi, block_expert, block: int = BLOCK):
    """Row r of block b times its expert's weights: x_rh[r] @ w_ehi[block_expert[b]]. [R, I].

    The per-block weights come from a one-hot product rather than a gather: its transpose (the weight
    gradient summed over each expert's blocks) is then a matmul as well, not a scatter-add.
    """
    r, h = x_rh.shape
    e, _, i = w_ehi.shape
    n_blocks = r // block
    onehot = jax.nn.one_hot(block_expert, e, dtype=w_ehi.dtype)
    w_bhi = jnp.dot(onehot, w_ehi.reshape(e, h * i)).reshape(n_blocks, h, i)
    return jnp.einsum("bmh,bhi->bmi", x_rh.reshape(n_blocks, block, h), w_bhi).reshape(r, i)


def experts_blocked(x_th, weights_tk, ids_tk, gate_ehi, up_ehi, down_eih):
    """Sorted dispatch with block-padded groups (see module docstring). [T, H]."""
    t, k = ids_tk.shape
    block = BLOCK
    layout = block_layout(ids_tk, gate_ehi.shape[0], block)
    x_rh = _dispatch(x_th, layout.src, layout.pos, k)
    g = _block_matmul(x_rh, gate_ehi, layout.block_expert, block)
    u = _block_matmul(x_rh, up_ehi, layout.block_expert, block)
    y_rh = _block_matmul(jax.nn.silu(g) * u, down_eih, layout.block_expert, block)
    y_tkh = _combine(y_rh, layout.pos, layout.src).reshape(t, k, -1)
    return jnp.einsum("tkh,tk->th", y_tkh, weights_tk.astype(y_tkh.dtype))


def pick_impl(
    impl: str, platform: str | None = None, *, tokens: int | None = None, experts: int = 1, top_k: int = 1
) -> str:
    """Resolves `auto` for `platform`: ragged_dot where it is native (TPU/GPU); on CPU dense for few
    tokens, else blocked.

    `platform` defaults to `jax.default_backend()`, the chips this process runs on. A program compiled for
    other chips than the host's (`sawt plan` compiles for TPU on a CPU machine) must pass the target's
    platform, or it would plan the CPU path: the blocked dispatch materialises its expert's weights for
    every block, ragged_dot none. On CPU, dense computes T*E expert rows and blocked T*k plus on average
    E*BLOCK/2 rows of padding (and a dispatch); without `tokens`, blocked.
    """
    if impl != "auto":
        return impl
    if (platform or jax.default_backend()) != "cpu":
        return "ragged"
    if tokens is not None and tokens * experts <= tokens * top_k + experts * BLOCK // 2:
        return "dense"
    return "blocked"


IMPLS = {"ragged": experts_ragged, "blocked": experts_blocked, "dense": experts_dense}


class SparseMoE(nnx.Module):
    """`mlp` of a decoder layer: `gate` (router) + `experts`."""

    def __init__(
        self, cfg: TextConfig, *, rngs, param_dtype, compute_dtype, impl="auto", stack=(), stack_axes=()
    ):
        self.top_k = cfg.num_experts_per_tok
        self.num_experts = cfg.num_experts
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
        fn = IMPLS[pick_impl(self.impl, tokens=b * s, experts=self.num_experts, top_k=self.top_k)]
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
