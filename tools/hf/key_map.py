"""The one HF key map: HF checkpoint keys <-> canonical parameter paths, for import and export alike.

`entries` is the table: each canonical tensor, the HF key template(s) it is built from, the transform and the
stacking (per layer, per layer and expert). `leaf_specs` turns it into one `LeafSpec` per canonical leaf for a
config: every HF key with its index into the stacked dims, the expected HF shape (to check a checkpoint before
reading it), and the exact transform and inverse of one slice. `tools.hf.convert` streams both directions
through these specs one slice at a time; the transforms are pure transposes plus reshapes, so HF -> Orbax -> HF
is bit-exact.

Transforms (HF torch layout -> ours): Linear W[out, in] -> kernel[in, out], then split heads
([in, n*hd] -> [in, n, hd] for q/k/v, [n*hd, out] -> [n, hd, out] for o/out_proj); Conv2d
[out, in, kh, kw] -> [kh, kw, in, out]; per-layer tensors stacked on L, per-expert ones on E.

Keys are the file layout (what `save_pretrained` writes: per-expert `mlp.experts.{e}.*_proj.weight`),
relative to the thinker: the release prefixes them with `thinker.`, a bare thinker's `save_pretrained` does not;
`tools.hf.convert` adds or strips the prefix. The vision tower (`visual.*`), the talker and code2wav are not
part of the map (`SKIPPED_GROUPS`): the ASR thinker never uses them, and an export copies them from its base.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from trainer.model.config import ModelConfig

# Top-level groups of a full Qwen3-Omni checkpoint that the ASR thinker does not hold.
SKIPPED_GROUPS = ("visual", "talker", "code2wav")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One canonical tensor and the HF tensors it is built from.

    Attributes:
        path: canonical path, '/'-separated.
        hf: HF key template; `{l}` = text or audio layer, `{e}` = expert.
        kind: transform: copy | T (transpose) | heads_in (W.T then split heads) | heads_out (W.T, split the
            input into heads) | bias_heads | conv.
        stack: '' (single tensor), 'l' (per layer) or 'le' (per layer and expert).
        audio: the layer index runs over audio layers.
    """

    path: str
    hf: str
    kind: str
    stack: str = ""
    audio: bool = False

    def _counts(self, cfg: ModelConfig) -> tuple[int, ...]:
        layers = cfg.audio.encoder_layers if self.audio else cfg.text.num_hidden_layers
        return {"": (), "l": (layers,), "le": (layers, cfg.text.num_experts)}[self.stack]

    def hf_keys(self, cfg: ModelConfig) -> list[str]:
        """HF keys (file layout, no prefix) in stacking order (layer-major, then expert)."""
        counts = self._counts(cfg)
        if not counts:
            return [self.hf]
        if len(counts) == 1:
            return [self.hf.format(l=i) for i in range(counts[0])]
        return [self.hf.format(l=i, e=j) for i in range(counts[0]) for j in range(counts[1])]


def _to_ours(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "copy":
        out = w
    elif kind in ("T", "heads_in", "heads_out"):
        out = w.T
    elif kind == "bias_heads":
        out = w
    elif kind == "conv":
        out = w.transpose(2, 3, 1, 0)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(out).reshape(shape)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "copy":
        out = x
    elif kind == "T":
        out = x.T
    elif kind == "heads_in":
        out = x.reshape(x.shape[0], -1).T
    elif kind == "heads_out":
        out = x.reshape(-1, x.shape[-1]).T
    elif kind == "bias_heads":
        out = x.reshape(-1)
    elif kind == "conv":
        out = x.transpose(3, 2, 0, 1)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(out)


def entries(cfg: ModelConfig) -> list[Entry]:
    """The full table for `cfg`'s thinker (vision, talker and code2wav are not part of it)."""
    del cfg  # the table is the same for every size; counts come from the config at use time
    a, t = "audio_tower", "model"
    out = [Entry(f"{a}/conv2d{i}/kernel", f"audio_tower.conv2d{i}.weight", "conv") for i in (1, 2, 3)]
    out += [Entry(f"{a}/conv2d{i}/bias", f"audio_tower.conv2d{i}.bias", "copy") for i in (1, 2, 3)]
    out.append(Entry(f"{a}/conv_out/kernel", "audio_tower.conv_out.weight", "T"))
    al = "audio_tower.layers.{l}"
    for p in ("q_proj", "k_proj", "v_proj"):
        out.append(
            Entry(f"{a}/layers/self_attn/{p}/kernel", f"{al}.self_attn.{p}.weight", "heads_in", "l", True)
        )
        out.append(
            Entry(f"{a}/layers/self_attn/{p}/bias", f"{al}.self_attn.{p}.bias", "bias_heads", "l", True)
        )
    out.append(
        Entry(
            f"{a}/layers/self_attn/out_proj/kernel", f"{al}.self_attn.out_proj.weight", "heads_out", "l", True
        )
    )
    out.append(
        Entry(f"{a}/layers/self_attn/out_proj/bias", f"{al}.self_attn.out_proj.bias", "copy", "l", True)
    )
    for n in ("self_attn_layer_norm", "final_layer_norm"):
        out.append(Entry(f"{a}/layers/{n}/scale", f"{al}.{n}.weight", "copy", "l", True))
        out.append(Entry(f"{a}/layers/{n}/bias", f"{al}.{n}.bias", "copy", "l", True))
    for n in ("fc1", "fc2"):
        out.append(Entry(f"{a}/layers/{n}/kernel", f"{al}.{n}.weight", "T", "l", True))
        out.append(Entry(f"{a}/layers/{n}/bias", f"{al}.{n}.bias", "copy", "l", True))
    out.append(Entry(f"{a}/ln_post/scale", "audio_tower.ln_post.weight", "copy"))
    out.append(Entry(f"{a}/ln_post/bias", "audio_tower.ln_post.bias", "copy"))
    for n in ("proj1", "proj2"):
        out.append(Entry(f"{a}/{n}/kernel", f"audio_tower.{n}.weight", "T"))
        out.append(Entry(f"{a}/{n}/bias", f"audio_tower.{n}.bias", "copy"))
    out.append(Entry(f"{t}/embed_tokens/embedding", "model.embed_tokens.weight", "copy"))
    tl = "model.layers.{l}"
    for n in ("input_layernorm", "post_attention_layernorm"):
        out.append(Entry(f"{t}/layers/{n}/scale", f"{tl}.{n}.weight", "copy", "l"))
    for p in ("q_proj", "k_proj", "v_proj"):
        out.append(Entry(f"{t}/layers/self_attn/{p}/kernel", f"{tl}.self_attn.{p}.weight", "heads_in", "l"))
    out.append(
        Entry(f"{t}/layers/self_attn/o_proj/kernel", f"{tl}.self_attn.o_proj.weight", "heads_out", "l")
    )
    for n in ("q_norm", "k_norm"):
        out.append(Entry(f"{t}/layers/self_attn/{n}/scale", f"{tl}.self_attn.{n}.weight", "copy", "l"))
    out.append(Entry(f"{t}/layers/mlp/gate/kernel", f"{tl}.mlp.gate.weight", "T", "l"))
    for p in ("gate_proj", "up_proj", "down_proj"):
        out.append(Entry(f"{t}/layers/mlp/experts/{p}", f"{tl}.mlp.experts.{{e}}.{p}.weight", "T", "le"))
    out.append(Entry(f"{t}/norm/scale", "model.norm.weight", "copy"))
    out.append(Entry("lm_head/kernel", "lm_head.weight", "T"))
    return out


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
        return _to_ours(self.kind, hf, self.slice_shape)

    def to_hf(self, piece: np.ndarray) -> np.ndarray:
        """One slice of the leaf -> the HF tensor (exact inverse of `to_canonical`)."""
        return _to_hf(self.kind, piece)


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
    from trainer.model.params import abstract_param_tree
    from trainer.model.tree import flatten, path_name

    shapes = {path_name(path): tuple(v.shape) for path, v in flatten(abstract_param_tree(config)).items()}
    specs = []
    for entry in entries(config):
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
