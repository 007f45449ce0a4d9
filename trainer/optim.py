"""The optimizer: AdamW with warmup + decay, global-norm clipping, and freezing by parameter group.

Parameters are addressed by their path in the canonical tree (docs/interfaces.md §4), e.g.
``model/layers/mlp/experts/gate_proj``. A frozen parameter is routed to `optax.set_to_zero`, which keeps no
state, so freezing the audio encoder or the experts also frees their two AdamW moments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from trainer.config import OptimizerConfig

# Path prefixes of each freezable group in the canonical parameter tree.
FREEZE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "audio_encoder": ("audio_tower/",),
    "embeddings": ("model/embed_tokens/",),
    "experts": ("model/layers/mlp/experts/",),
    "router": ("model/layers/mlp/gate/",),
}
# Leaves named like these get no weight decay (norm scales and biases).
_NO_DECAY_NAMES = ("scale", "bias")


def path_str(path: tuple[Any, ...]) -> str:
    """'a/b/c' for a jax tree path of dict keys (or attribute/sequence entries)."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def is_frozen(path: str, freeze: tuple[str, ...] | list[str]) -> bool:
    """Whether the parameter at ``path`` belongs to one of the frozen groups."""
    for group in freeze:
        if group not in FREEZE_GROUPS:
            raise ValueError(f"unknown freeze group {group!r}; known: {', '.join(FREEZE_GROUPS)}")
        if any(path.startswith(prefix) for prefix in FREEZE_GROUPS[group]):
            return True
    return False


def trainable_mask(params: Any, freeze: tuple[str, ...] | list[str]) -> Any:
    """A tree of bools like ``params``: True where the parameter is trained."""
    return jax.tree_util.tree_map_with_path(lambda p, _: not is_frozen(path_str(p), freeze), params)


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then cosine, linear or constant down to ``min_lr_ratio`` x peak."""
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if cfg.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def build_optimizer(
    cfg: OptimizerConfig, total_steps: int, params: Any, freeze: tuple[str, ...] | list[str] = ()
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """AdamW with clipping and freezing.

    Args:
        cfg: optimizer section of the experiment config.
        total_steps: length of the run (the end of the decay).
        params: the parameter tree (arrays or shapes), to label frozen leaves.
        freeze: frozen group names (see FREEZE_GROUPS).

    Returns:
        (transformation, schedule). Frozen leaves get zero updates and no optimizer state.
    """
    schedule = learning_rate_schedule(cfg, total_steps)

    def decay_mask(tree: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda p, _: path_str(p).rsplit("/", 1)[-1] not in _NO_DECAY_NAMES, tree
        )

    adamw = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
        ),
    )
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen", trainable_mask(params, freeze))
    tx = optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
