"""HF checkpoint keys <-> canonical parameter paths, with the transposes, reshapes and stacking.

One table (`entries`) drives both directions; it is used by the parity tests (HF safetensors -> our model)
and by the streaming converter (`sawt convert`), which loads one canonical tensor at a time
(`Entry.hf_keys` says which HF tensors it needs, `to_canonical` builds it, `from_canonical` inverts it).

HF keys are accepted with or without the `thinker.` prefix (the released checkpoint has it, a bare
thinker's `save_pretrained` does not) and in the in-memory layout (`model.language_model.*`,
`model.audio_tower.*`). Keys of the vision tower (`visual.*`), the talker and code2wav are skipped: the
ASR thinker never uses them (`normalize_key` returns None). Experts are read per expert
(`mlp.experts.{e}.gate_proj.weight`, the file layout) or from the fused in-memory layout
(`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]).

Transforms (HF torch layout -> ours): Linear W[out, in] -> kernel[in, out], then split heads
([in, n*hd] -> [in, n, hd] for q/k/v, [n*hd, out] -> [n, hd, out] for o/out_proj); Conv2d
[out, in, kh, kw] -> [kh, kw, in, out]; per-layer tensors stacked on L, per-expert ones on E.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from trainer.model.config import ModelConfig

SKIPPED_PREFIXES = ("visual.", "talker.", "code2wav.")


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

    def to_canonical(self, get: Callable[[str], np.ndarray], cfg: ModelConfig, slice_shape: tuple[int, ...]):
        """Builds the stacked canonical array from HF tensors fetched with `get(key)`."""
        parts = [_to_ours(self.kind, np.asarray(get(k)), slice_shape) for k in self.hf_keys(cfg)]
        counts = self._counts(cfg)
        if not counts:
            return parts[0]
        return np.stack(parts).reshape(*counts, *slice_shape)

    def from_canonical(self, array: np.ndarray, cfg: ModelConfig) -> dict[str, np.ndarray]:
        """Splits a canonical array into HF tensors (file layout, no prefix)."""
        counts = self._counts(cfg)
        flat = (
            np.asarray(array).reshape(-1, *np.shape(array)[len(counts) :]) if counts else [np.asarray(array)]
        )
        return {k: _to_hf(self.kind, x) for k, x in zip(self.hf_keys(cfg), flat, strict=True)}


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


def normalize_key(key: str) -> str | None:
    """Maps any HF spelling of a thinker key to the file layout without prefix; None for skipped parts."""
    if key.startswith("thinker."):
        key = key[len("thinker.") :]
    elif key.startswith(("talker.", "code2wav.")):
        return None
    if key.startswith("model.language_model."):
        key = "model." + key[len("model.language_model.") :]
    elif key.startswith(("model.audio_tower.", "model.visual.")):
        key = key[len("model.") :]
    if key.startswith(SKIPPED_PREFIXES):
        return None
    return key


class HFTensors:
    """Normalised-key view over HF tensors (a dict, or lazily over safetensors files).

    Fused in-memory expert tensors (`...mlp.experts.gate_up_proj` / `down_proj` [E, ...]) are split into
    the per-expert file keys on demand.
    """

    def __init__(self, loaders: Mapping[str, Callable[[], np.ndarray]]):
        self._loaders: dict[str, Callable[[], np.ndarray]] = {}
        self.skipped: list[str] = []
        for key, load in loaders.items():
            norm = normalize_key(key)
            if norm is None:
                self.skipped.append(key)
            else:
                self._loaders[norm] = load

    @classmethod
    def from_dict(cls, tensors: Mapping[str, np.ndarray]) -> HFTensors:
        return cls({k: (lambda v=v: v) for k, v in tensors.items()})

    @classmethod
    def from_safetensors(cls, paths: Iterable[str | Path]) -> HFTensors:
        """Lazy view over one or more .safetensors files (bf16 comes back as ml_dtypes bfloat16)."""
        from safetensors import safe_open

        loaders: dict[str, Callable[[], np.ndarray]] = {}
        for path in paths:
            with safe_open(str(path), framework="flax") as f:
                keys = list(f.keys())

            def load(key, path=str(path)):
                with safe_open(path, framework="flax") as g:
                    return np.asarray(g.get_tensor(key))

            for key in keys:
                loaders[key] = lambda key=key, load=load: load(key)
        return cls(loaders)

    @classmethod
    def from_dir(cls, directory: str | Path) -> HFTensors:
        paths = sorted(Path(directory).glob("*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"no *.safetensors files in {directory}")
        return cls.from_safetensors(paths)

    def keys(self) -> list[str]:
        return sorted(self._loaders)

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._loaders)

    def __contains__(self, key: str) -> bool:
        return key in self._loaders

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._loaders:
            return self._loaders[key]()
        fused = _fused_expert(key)
        if fused is not None:
            fused_key, e, part = fused
            if fused_key in self._loaders:
                w = self._loaders[fused_key]()[e]
                if part == "down_proj":
                    return w
                half = w.shape[0] // 2
                return w[:half] if part == "gate_proj" else w[half:]
        raise KeyError(f"HF checkpoint has no tensor {key!r}")


def _fused_expert(key: str) -> tuple[str, int, str] | None:
    parts = key.split(".")
    # model.layers.{l}.mlp.experts.{e}.{gate_proj|up_proj|down_proj}.weight
    if len(parts) == 8 and parts[4] == "experts" and parts[7] == "weight":
        base = ".".join(parts[:5])
        e, part = int(parts[5]), parts[6]
        return (f"{base}.down_proj" if part == "down_proj" else f"{base}.gate_up_proj"), e, part
    return None


def hf_to_tree(
    tensors: HFTensors | Mapping[str, np.ndarray], cfg: ModelConfig, abstract: Mapping | None = None
):
    """Builds the whole canonical tree (numpy) from HF tensors.

    Args:
        tensors: an `HFTensors` view or a plain dict of HF keys (any spelling) -> arrays.
        cfg: the model config (layer and expert counts).
        abstract: the canonical tree of shapes (`params.abstract_param_tree(cfg)`); computed if None.
    """
    from trainer.model.params import abstract_param_tree, flatten, unflatten

    view = tensors if isinstance(tensors, HFTensors) else HFTensors.from_dict(tensors)
    shapes = dict(flatten(abstract if abstract is not None else abstract_param_tree(cfg)))
    flat = {}
    for entry in entries(cfg):
        full = tuple(shapes[entry.path].shape)
        n_stack = len(entry._counts(cfg))
        flat[entry.path] = entry.to_canonical(view.__getitem__, cfg, full[n_stack:])
    return unflatten(flat)


def tree_to_hf(tree: Mapping, cfg: ModelConfig, prefix: str = "") -> dict[str, np.ndarray]:
    """Canonical tree -> HF tensors in the file layout; `prefix='thinker.'` gives the released naming."""
    from trainer.model.params import flatten

    flat = dict(flatten(tree))
    out: dict[str, np.ndarray] = {}
    for entry in entries(cfg):
        for key, value in entry.from_canonical(np.asarray(flat[entry.path]), cfg).items():
            out[prefix + key] = value
    return out
