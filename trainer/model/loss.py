"""Training loss: token-level cross-entropy over supervised targets plus the router load-balancing loss,
and optionally a CTC loss on the audio encoder's outputs (`ctc_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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


def ctc_loss(
    audio_logits: jax.Array,
    audio_valid: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    blank_id: int,
) -> tuple[jax.Array, jax.Array]:
    """CTC of each row's transcript on its audio token stream (one clip per row), per transcript token.

    Why: the decoder first learns the transcripts from the text alone (the loss sits near its prior) and only
    later starts to read the audio. CTC gives the encoder a direct transcript signal from the first step, read
    through the same `lm_head` (no new weights, nothing to convert or serve), so the audio tokens carry the
    words sooner. The blank is `<|audio_pad|>`, a token the decoder never emits.

    Labels: the supervised targets of the row, in order, less the last one (the closing `<|im_end|>`, which
    the audio does not say). Rows whose labels cannot align to their audio tokens (a label count plus
    repeats above the valid token count) are left out.

    Args:
        audio_logits: [B, TA, V]; audio_valid: bool [B, TA] (valid tokens first, as `clip_layout` lays them).
        targets: int [B, S]; loss_mask: [B, S] (> 0 where the target is supervised).
        blank_id: the CTC blank.

    Returns:
        (sum of the CTC losses of the rows used / their label tokens [], label tokens used [] as float).
    """
    s = targets.shape[1]
    supervised = loss_mask > 0
    # Supervised targets first, in their order (a stable sort of "not supervised").
    order = jnp.argsort(~supervised, axis=1, stable=True)
    labels = jnp.take_along_axis(targets.astype(jnp.int32), order, axis=1)
    n = jnp.maximum(jnp.sum(supervised, axis=1) - 1, 0)
    is_label = jnp.arange(s)[None, :] < n[:, None]
    repeats = jnp.sum(is_label[:, 1:] & (labels[:, 1:] == labels[:, :-1]), axis=1)
    usable = (n > 0) & (n + repeats <= jnp.sum(audio_valid, axis=1))
    per_row = optax.ctc_loss(
        audio_logits.astype(jnp.float32),
        (~audio_valid).astype(jnp.float32),
        labels,
        (~is_label).astype(jnp.float32),
        blank_id=blank_id,
    )
    tokens = jnp.sum(jnp.where(usable, n, 0)).astype(jnp.float32)
    return jnp.sum(jnp.where(usable, per_row, 0.0)) / jnp.maximum(tokens, 1.0), tokens


def thinker_loss(
    output: ThinkerOutput,
    batch: dict,
    aux_coef: float,
    ctc_coef: float = 0.0,
    blank_id: int | None = None,
) -> tuple[jax.Array, dict]:
    """loss = CE(logits, targets | loss_mask) + aux_coef * load-balancing aux [+ ctc_coef * CTC].

    Args:
        output: the Thinker's output.
        batch: needs `targets` int [B, S] and `loss_mask` float [B, S].
        aux_coef: weight of the aux loss (HF: router_aux_loss_coef, 0.001).
        ctc_coef: weight of `ctc_loss` on the audio streams (0: not computed); needs one clip per row
            (`audio_frames` [B]) and `blank_id`.
        blank_id: the CTC blank (the `<|audio_pad|>` id).

    Returns:
        (loss [], metrics {ce, aux, tokens, expert_load [E]}, plus ctc when ctc_coef > 0).
    """
    targets, loss_mask = jnp.asarray(batch["targets"]), jnp.asarray(batch["loss_mask"])
    ce, tokens = cross_entropy(output.logits, targets, loss_mask)
    aux, load = load_balancing_loss(output.router_stats)
    loss = ce + aux_coef * aux
    metrics = {"ce": ce, "aux": aux, "tokens": tokens, "expert_load": load}
    if ctc_coef > 0 and output.audio_logits is not None:
        if blank_id is None or jnp.ndim(batch["audio_frames"]) != 1:
            raise ValueError("the CTC loss needs a blank id and one clip per row (audio_frames [B])")
        ctc, _ = ctc_loss(output.audio_logits, output.audio_valid, targets, loss_mask, blank_id)
        loss = loss + ctc_coef * ctc
        metrics["ctc"] = ctc
    return loss, metrics
