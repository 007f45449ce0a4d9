"""Logical axis names -> mesh axes: the one table that decides how the thinker is laid out on a mesh.

Every parameter carries its logical axes as `nnx.Param(..., axes=(...))` metadata, and the main activations
are constrained with `constrain(x, axes)`. The trainer builds shardings with `param_shardings(model, mesh)`
(or `param_specs` for an abstract model). Mesh axes: `data`, `fsdp`, `expert`, `tensor`. A mesh axis that
is missing from the mesh, or that does not divide the dimension, is dropped (the dimension is replicated
over it), so one rules table serves every mesh from 1 CPU to a v4-32 slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Parameter axes first, then activation axes (prefixed act_ where the parameter axis of the same meaning
# is FSDP-sharded but the activation must not be).
RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "layers": (),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "expert": ("expert",),
    "expert_mlp": ("tensor",),
    "norm": (),
    "audio_embed": ("fsdp",),
    "audio_heads": ("tensor",),
    "audio_mlp": ("tensor",),
    "conv_in": (),
    "conv_out": (),
    "conv_flat": (),
    "kernel_h": (),
    "kernel_w": (),
    # activations
    "batch": ("data", "fsdp", "expert"),
    "seq": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_vocab": ("tensor",),
    "audio_frames": (),
    "mel": (),
    "cache_len": (),
}


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh_shape: Mapping[str, int] | None = None,
    rules: Mapping[str, tuple[str, ...]] = RULES,
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec.

    Args:
        axes: one logical name (or None) per array dimension.
        shape: the array shape; with `mesh_shape`, mesh axes that do not divide a dimension are dropped.
        mesh_shape: mesh axis name -> size; mesh axes absent from it are dropped.
        rules: logical name -> mesh axes.

    Raises:
        KeyError: for a logical name the rules do not know.
    """
    used: set[str] = set()
    out: list[tuple[str, ...] | None] = []
    for i, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule (known: {sorted(rules)})")
        picked: list[str] = []
        size = 1
        for mesh_axis in rules[name]:
            if mesh_axis in used or (mesh_shape is not None and mesh_axis not in mesh_shape):
                continue
            n = mesh_shape[mesh_axis] if mesh_shape is not None else 1
            if shape is not None and mesh_shape is not None and shape[i] % (size * n):
                continue
            picked.append(mesh_axis)
            size *= n
        used.update(picked)
        out.append(tuple(picked) if picked else None)
    return PartitionSpec(*out)


def _mesh_shape(mesh) -> dict[str, int]:
    return dict(
        zip(
            mesh.axis_names,
            mesh.axis_sizes if hasattr(mesh, "axis_sizes") else mesh.devices.shape,
            strict=True,
        )
    )


def param_logical_axes(model_or_state) -> dict:
    """Nested dict (the canonical tree's layout) of each parameter's logical axes."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)

    def axes_of(v):
        return tuple(v.get_metadata()["axes"])

    return nnx.to_pure_dict(jax.tree.map(axes_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def param_specs(model_or_state, mesh: Mesh) -> dict:
    """Nested dict of PartitionSpecs for the canonical parameter tree on `mesh`."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    mesh_shape = _mesh_shape(mesh)

    def spec_of(v):
        return logical_to_spec(v.get_metadata()["axes"], v.shape, mesh_shape)

    return nnx.to_pure_dict(jax.tree.map(spec_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def param_shardings(model_or_state, mesh: Mesh) -> dict:
    """Nested dict of NamedShardings for the canonical parameter tree on `mesh`."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        param_specs(model_or_state, mesh),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard_model(model: nnx.Module, mesh: Mesh) -> None:
    """Moves every parameter of `model` (in place) to its sharding on `mesh`."""
    state = nnx.state(model, nnx.Param)
    shardings = param_shardings(state, mesh)
    pure = nnx.to_pure_dict(state)
    placed = jax.tree.map(jax.device_put, pure, shardings)
    nnx.replace_by_pure_dict(state, placed)
    nnx.update(model, state)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names when a mesh is set (`jax.set_mesh`); else a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(axes, x.shape, _mesh_shape(mesh))
    return jax.lax.with_sharding_constraint(x, spec)
