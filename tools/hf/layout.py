"""A streaming view of the HF key table: one `LeafSpec` per canonical leaf (docs/interfaces.md §4).

The table itself (which HF tensors make each leaf, and the transform of each) is
`tools.hf.key_map.entries`; slice shapes come from the model's own abstract parameter tree. This module
only adds what streaming needs: the expected HF shape of every tensor (to check a checkpoint before reading
it) and the stacked index of each HF tensor, so one slice can be read, transformed and placed at a time.
The transforms are pure transposes plus reshapes, so they invert exactly and HF -> Orbax -> HF is bit-exact.

Keys are relative to the thinker (no ``thinker.`` prefix); `tools.hf.convert` adds or strips the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.hf import key_map
from trainer.model.config import ModelConfig

# Top-level groups of a full Qwen3-Omni checkpoint that an ASR thinker does not use.
SKIPPED_GROUPS = tuple(p.rstrip(".") for p in key_map.SKIPPED_PREFIXES)


@dataclass(frozen=True)
class LeafSpec:
    """How one canonical leaf is made from HF tensors.

    Attributes:
        path: the leaf's path in the canonical tree, e.g. ``("model", "layers", "mlp", "gate", "kernel")``.
        keys: the HF keys (no prefix) in stacking order, each with its index into the stacked dims.
        stack: leading stacked dims of the leaf: () unstacked, (L,) per layer, (L, E) per layer and expert.
        kind: the `key_map` transform of one HF tensor.
        hf_shape: shape of one HF tensor.
        slice_shape: shape of one slice of the leaf.
    """

    path: tuple[str, ...]
    keys: tuple[tuple[tuple[int, ...], str], ...]
    stack: tuple[int, ...]
    kind: str
    hf_shape: tuple[int, ...]
    slice_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stack + self.slice_shape

    def hf_keys(self) -> tuple[tuple[tuple[int, ...], str], ...]:
        """``((index into the stacked dims, HF key), ...)`` in stacking order."""
        return self.keys

    def to_canonical(self, hf: np.ndarray) -> np.ndarray:
        """One HF tensor -> one slice of the leaf."""
        return key_map._to_ours(self.kind, hf, self.slice_shape)

    def to_hf(self, piece: np.ndarray) -> np.ndarray:
        """One slice of the leaf -> the HF tensor (exact inverse of `to_canonical`)."""
        return key_map._to_hf(self.kind, piece)


def _hf_shape(kind: str, slice_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape that `key_map` maps onto a slice of ``slice_shape`` (shapes only, no data)."""
    if kind == "copy":
        return slice_shape
    if kind == "bias_heads":
        return (int(np.prod(slice_shape)),)
    if kind == "T":
        return slice_shape[::-1]
    if kind == "heads_in":  # [in, n, hd] <- W[n*hd, in]
        return (int(np.prod(slice_shape[1:])), slice_shape[0])
    if kind == "heads_out":  # [n, hd, out] <- W[out, n*hd]
        return (slice_shape[-1], int(np.prod(slice_shape[:-1])))
    if kind == "conv":  # [kh, kw, in, out] <- W[out, in, kh, kw]
        kh, kw, cin, cout = slice_shape
        return (cout, cin, kh, kw)
    raise ValueError(f"unknown transform kind {kind!r}")


def leaf_specs(config: ModelConfig) -> list[LeafSpec]:
    """Every leaf of the canonical tree for ``config``, in `key_map` table order."""
    from trainer.model.params import abstract_param_tree, flatten

    shapes = {path: tuple(v.shape) for path, v in flatten(abstract_param_tree(config))}
    specs = []
    for entry in key_map.entries(config):
        stack = tuple(entry._counts(config))
        full = shapes[entry.path]
        if full[: len(stack)] != stack:
            raise ValueError(f"{entry.path}: model shape {full} does not start with the stacked dims {stack}")
        slice_shape = full[len(stack) :]
        keys = tuple(zip(np.ndindex(*stack), entry.hf_keys(config), strict=True))
        keys = tuple((tuple(int(i) for i in idx), key) for idx, key in keys)
        specs.append(
            LeafSpec(
                tuple(entry.path.split("/")),
                keys,
                stack,
                entry.kind,
                _hf_shape(entry.kind, slice_shape),
                slice_shape,
            )
        )
    return specs
