"""Nested dicts of leaves <-> flat ``{path tuple: leaf}``: the one flatten/unflatten pair of the project.

The canonical parameter tree (`trainer.model.params`), the checkpoint reader and writer
(`trainer.model_checkpoint`) and the HF conversion (`tools.hf`) all walk nested dicts this way. Paths are
tuples of the dict keys, ``("model", "norm", "scale")``; `path_name` spells one as the docs and the HF key
map do, ``model/norm/scale``. No jax here, so the checkpoint code stays importable without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Path = tuple[Any, ...]


def flatten(tree: Mapping[Any, Any], prefix: Path = ()) -> dict[Path, Any]:
    """``{path: leaf}`` of a nested dict, in the tree's own order (anything not a Mapping is a leaf)."""
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def unflatten(leaves: Mapping[Path, Any]) -> dict[Any, Any]:
    """Inverse of `flatten`: ``{("a", "b"): x}`` -> ``{"a": {"b": x}}``."""
    tree: dict[Any, Any] = {}
    for path, value in leaves.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def path_name(path: Path) -> str:
    """``("model", "norm", "scale")`` -> ``"model/norm/scale"``, as messages and the HF key map spell it."""
    return "/".join(str(p) for p in path)
