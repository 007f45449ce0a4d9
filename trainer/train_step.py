"""The train step: one pure function ``(state, batch) -> (state, metrics)``, jitted with the state donated.

The state is a plain dict so that Orbax, sharding rules and ``jax.eval_shape`` all see the same tree:
``params`` (the canonical parameter tree, in the master dtype), ``opt_state``, ``step`` (int32),
``rng`` (raw key data, uint32 [2]), ``nonfinite_in_a_row`` and ``nonfinite_total`` (int32).

What one step does:
1. splits the global batch into ``grad_accum`` micro-batches (strided rows, so that every device keeps
   its own rows) and sums token-weighted gradients over them with ``lax.scan``;
2. runs forward and backward in the compute dtype (floating params are cast inside the step; frozen
   params are behind ``stop_gradient`` so XLA drops their weight gradients);
3. skips the update when the loss or the gradient norm is NaN/Inf, counting the skip;
4. applies AdamW (see trainer/optim.py) and reports loss, grad norm, learning rate, tokens and the
   MoE expert load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from trainer.config import TrainConfig

# (params, batch) -> model output; the output is whatever `loss_fn` takes.
ApplyFn = Callable[[Any, dict[str, jax.Array]], Any]
# (output, batch, aux_coef) -> (loss, metrics with "ce", "aux", "tokens" and optionally "ctc" and
# "expert_load" [E]).
LossFn = Callable[[Any, dict[str, jax.Array], float], tuple[jax.Array, dict[str, jax.Array]]]

_REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> dict[str, Any]:
    """A fresh train state around ``params`` (call under jit to place it with the right shardings)."""
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
        "nonfinite_in_a_row": jnp.zeros((), jnp.int32),
        "nonfinite_total": jnp.zeros((), jnp.int32),
    }


def _cast_floating(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def split_micro_batches(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """[B, ...] -> [n, B/n, ...] taking rows i, i+n, i+2n... for micro-batch i.

    Strided rows keep each device's share of every micro-batch local when the batch axis is sharded.
    """

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: TrainConfig,
    trainable: Any,
    wrap_remat: bool = True,
    default_dtypes: tuple[str, str] = ("float32", "float32"),
) -> Callable[[dict[str, Any], dict[str, jax.Array]], tuple[dict[str, Any], dict[str, jax.Array]]]:
    """Builds the pure train step.

    Args:
        apply_fn: the model's forward pass on the canonical params.
        loss_fn: the loss (cross-entropy on transcript tokens + router aux loss).
        tx: the optimizer (trainer/optim.py).
        schedule: the learning-rate schedule, reported as a metric.
        cfg: the train section (grad_accum, aux coefficient, remat, precision).
        trainable: tree of bools like params; False leaves are frozen.
        wrap_remat: apply ``cfg.remat`` by wrapping the whole forward pass in ``jax.checkpoint`` (for
            models that do not apply it per layer themselves).
        default_dtypes: (param, compute) dtypes used where ``cfg.precision`` leaves them unset.

    Returns:
        ``step(state, batch) -> (state, metrics)``; jit it with ``donate_argnums=0``.
    """
    param_dtype = jnp.dtype(cfg.precision.param_dtype or default_dtypes[0])
    compute_dtype = jnp.dtype(cfg.precision.compute_dtype or default_dtypes[1])

    forward = apply_fn
    if not wrap_remat:
        pass
    elif cfg.remat == "full":
        forward = jax.checkpoint(apply_fn)
    elif cfg.remat in _REMAT_POLICIES:
        forward = jax.checkpoint(apply_fn, policy=_REMAT_POLICIES[cfg.remat])

    def micro_loss(params, micro, total_tokens):
        params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
        output = forward(_cast_floating(params, compute_dtype), micro)
        loss, metrics = loss_fn(output, micro, cfg.aux_loss_coef)
        weight = metrics["tokens"].astype(jnp.float32) / jnp.maximum(total_tokens, 1.0)
        # Token-weighted, so k micro-batches give the gradient of the mean over the whole batch.
        return loss.astype(jnp.float32) * weight, metrics

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, batch):
        params = state["params"]
        total_tokens = jnp.sum(batch["loss_mask"]).astype(jnp.float32)

        def accumulate(carry, micro):
            grads_acc, loss_acc = carry
            (loss, metrics), grads = grad_fn(params, micro, total_tokens)
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            return (grads_acc, loss_acc + loss), metrics

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        start = (zeros, jnp.zeros((), jnp.float32))
        if cfg.grad_accum == 1:
            # No loop for a single micro-batch: XLA:CPU runs a while loop's body several times slower than
            # the same ops at top level (measured 4x on the demo model), and the sum over one is the value.
            (grads, loss), metrics_1 = accumulate(start, batch)
            micro_metrics = jax.tree.map(lambda m: m[None], metrics_1)
        else:
            micros = split_micro_batches(batch, cfg.grad_accum)
            (grads, loss), micro_metrics = jax.lax.scan(accumulate, start, micros)
        grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, new_opt = tx.update(_cast_floating(grads, param_dtype), state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        # A NaN/Inf step leaves params and optimizer state exactly as they were.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "step": state["step"] + 1,
            "rng": jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 1)),
            "nonfinite_in_a_row": jnp.where(finite, 0, state["nonfinite_in_a_row"] + 1),
            "nonfinite_total": state["nonfinite_total"] + (~finite).astype(jnp.int32),
        }
        metrics = {
            "loss": loss,
            "ce": _token_weighted(micro_metrics, "ce", total_tokens),
            "aux": jnp.mean(micro_metrics["aux"]).astype(jnp.float32),
            "grad_norm": grad_norm,
            "learning_rate": schedule(state["step"]),
            "tokens": total_tokens,
            "finite": finite,
            "nonfinite_in_a_row": new_state["nonfinite_in_a_row"],
            "nonfinite_total": new_state["nonfinite_total"],
        }
        if "ctc" in micro_metrics:
            metrics["ctc"] = jnp.mean(micro_metrics["ctc"]).astype(jnp.float32)
        if "expert_load" in micro_metrics:
            load = jnp.mean(micro_metrics["expert_load"].astype(jnp.float32), axis=0)
            load = load.reshape(-1, load.shape[-1]).mean(axis=0)  # per-layer loads -> mean per expert
            metrics.update(expert_load=load, expert_load_min=jnp.min(load), expert_load_max=jnp.max(load))
        return new_state, metrics

    return step


def _token_weighted(micro_metrics: dict[str, jax.Array], key: str, total_tokens: jax.Array) -> jax.Array:
    values = micro_metrics[key].astype(jnp.float32)
    tokens = micro_metrics["tokens"].astype(jnp.float32)
    return jnp.sum(values * tokens) / jnp.maximum(total_tokens, 1.0)
