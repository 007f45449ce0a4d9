"""The canonical parameter tree (docs/interfaces.md §4): what conversion writes and trainer/server load.

The tree is a nested dict of arrays whose paths are exactly the Thinker's NNX attribute paths, e.g.
`model/layers/mlp/experts/gate_proj` [L, E, H, I]. Text and audio layers are stacked on a leading axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trainer.model.config import ModelConfig
from trainer.model.tree import flatten, path_name, unflatten


def param_tree(model: nnx.Module) -> dict:
    """The canonical nested dict of parameter arrays (the arrays themselves, not copies)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def abstract_param_tree(config: ModelConfig) -> dict:
    """Shapes and dtypes of the canonical tree (jax.ShapeDtypeStruct leaves), without allocating."""
    from trainer.model.thinker import Thinker

    model = nnx.eval_shape(lambda: Thinker(config, rngs=nnx.Rngs(0)))
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), param_tree(model))


def load_param_tree(model: nnx.Module, tree: Mapping[str, Any]) -> None:
    """Loads a canonical tree into `model` in place, casting to the model's parameter dtype.

    Every path of the model must be present with exactly its shape, and the tree must hold nothing else.
    Arrays keep their sharding if they are already jax arrays with one; numpy arrays are placed where the
    model's current parameter lives.

    Raises:
        ValueError: listing missing, unexpected and wrongly shaped paths.
    """
    state = nnx.state(model, nnx.Param)
    want = flatten(nnx.to_pure_dict(state))
    got = flatten(tree)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shape_errors = [
        f"{path_name(p)}: expected {tuple(want[p].shape)}, got {tuple(got[p].shape)}"
        for p in sorted(set(want) & set(got))
        if tuple(want[p].shape) != tuple(got[p].shape)
    ]
    if missing or extra or shape_errors:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(map(path_name, missing))}")
        if extra:
            parts.append(f"unexpected: {', '.join(map(path_name, extra))}")
        if shape_errors:
            parts.append("wrong shape: " + "; ".join(shape_errors))
        raise ValueError("parameter tree does not match the model: " + " | ".join(parts))

    def place(old, new):
        new = jnp.asarray(new, dtype=old.dtype) if not isinstance(new, jax.Array) else new.astype(old.dtype)
        sharding = getattr(old, "sharding", None)
        if sharding is not None and not isinstance(new, jax.core.Tracer) and new.sharding != sharding:
            new = jax.device_put(new, sharding)
        return new

    loaded = unflatten({p: place(want[p], got[p]) for p in want})
    nnx.replace_by_pure_dict(state, loaded)
    nnx.update(model, state)
