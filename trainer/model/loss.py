"""Training loss: token-level cross-entropy over supervised targets plus the router load-balancing loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainer.model.thinker import ThinkerOutput


def load_balancing_loss(router_stats: dict, top_k: int | None = None) -> tuple[jax.Array, jax.Array]:
    """HF's `load_balancing_loss_func`, from the statistics the model already pooled over valid tokens.

    f_e = top-k assignments to e / (valid tokens x layers), P_e = mean router probability of e over the
    same rows, both pooled over layers before the product; aux = E * sum_e f_e * P_e (= top_k when
    perfectly balanced).

    Args:
        router_stats: `counts`, `prob_sum` [L, E] and `tokens` [] from `ThinkerOutput.router_stats`.
        top_k: unused (the counts already hold k assignments per token); kept for readability at call sites.

    Returns:
        (aux loss [], expert_load [E] = fraction of all assignments that went to each expert).
    """
    del top_k
    counts, prob_sum = router_stats["counts"], router_stats["prob_sum"]
    n_layers, n_experts = counts.shape
    rows = jnp.maximum(router_stats["tokens"] * n_layers, 1.0)
    f = jnp.sum(counts, axis=0) / rows
    p = jnp.sum(prob_sum, axis=0) / rows
    aux = n_experts * jnp.sum(f * p)
    load = jnp.sum(counts, axis=0) / jnp.maximum(jnp.sum(counts), 1.0)
    return aux, load


def cross_entropy(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean fp32 cross-entropy over positions where loss_mask > 0 (HF's token-level reduction).

    Returns:
        (mean CE [], number of supervised tokens [] as float).
    """
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = loss_mask.astype(jnp.float32)
    tokens = jnp.sum(mask)
    nll = jnp.where(mask > 0, logz - picked, 0.0)
    return jnp.sum(nll * mask) / jnp.maximum(tokens, 1.0), tokens


def thinker_loss(output: ThinkerOutput, batch: dict, aux_coef: float) -> tuple[jax.Array, dict]:
    """loss = CE(logits, targets | loss_mask) + aux_coef * load-balancing aux.

    Args:
        output: the Thinker's output.
        batch: needs `targets` int [B, S] and `loss_mask` float [B, S].
        aux_coef: weight of the aux loss (HF: router_aux_loss_coef, 0.001).

    Returns:
        (loss [], metrics {ce, aux, tokens, expert_load [E]}).
    """
    ce, tokens = cross_entropy(output.logits, jnp.asarray(batch["targets"]), jnp.asarray(batch["loss_mask"]))
    aux, load = load_balancing_loss(output.router_stats)
    loss = ce + aux_coef * aux
    return loss, {"ce": ce, "aux": aux, "tokens": tokens, "expert_load": load}
