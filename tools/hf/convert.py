"""HF safetensors <-> model checkpoint (Orbax) conversion, streaming one stacked tensor at a time.

hf-to-orbax: read the HF headers, check every expected tensor is there with the right shape (and nothing
unexpected), then for each canonical leaf allocate the stacked array, read each per-layer/per-expert HF
tensor into a small buffer, permute it into its slice, and hand the finished leaf to Orbax before building
the next. Peak memory is the largest stacked leaf plus one HF tensor plus Orbax's write chunk.

orbax-to-hf: restore one leaf at a time and write its HF tensors straight into HF-style shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from tools.hf.layout import SKIPPED_GROUPS, LeafSpec, leaf_specs
from tools.hf.safetensors_io import (
    DEFAULT_MAX_SHARD_BYTES,
    PlannedTensor,
    ShardedWriter,
    TensorInfo,
    open_checkpoint,
    read_rows,
    read_tensor,
)

THINKER_PREFIX = "thinker."
# Large unstacked tensors are read and transposed in blocks of this size.
BLOCK_BYTES = 64 << 20
DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32)}
DTYPE_NAMES = {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float32): "float32"}


class ConversionError(ValueError):
    """The HF checkpoint does not match its config; the message names the tensor."""


@dataclass
class HfPlan:
    """What a conversion will read: which HF tensor feeds each slice of each leaf."""

    prefix: str
    specs: list[LeafSpec]
    sources: dict[str, TensorInfo]  # full HF key -> where it is
    skipped: Counter


def _group(name: str) -> str | None:
    """The skipped group a key belongs to (``visual``, ``talker``, ``code2wav``), else None."""
    head = name.removeprefix(THINKER_PREFIX).split(".", 1)[0]
    return head if head in SKIPPED_GROUPS else None


def plan_hf(tensors: dict[str, TensorInfo], model_config) -> HfPlan:
    """Matches the checkpoint's tensors to the canonical leaves.

    Raises:
        ConversionError: naming a missing tensor, an unexpected one, or a shape mismatch.
    """
    specs = leaf_specs(model_config)
    skipped: Counter = Counter()
    kept = {}
    for name, info in tensors.items():
        group = _group(name)
        if group is not None:
            skipped[group] += 1
        else:
            kept[name] = info
    prefix = THINKER_PREFIX if any(k.startswith(THINKER_PREFIX) for k in kept) else ""
    unprefixed = [k for k in kept if not k.startswith(prefix)]
    if unprefixed:
        raise ConversionError(
            f"mixed key layouts: {unprefixed[0]!r} lacks the {prefix!r} prefix that other tensors carry"
        )
    expected: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        for _, key in spec.hf_keys():
            expected[prefix + key] = spec.hf_shape
    missing = [k for k in expected if k not in kept]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"missing tensor {missing[0]}{more}")
    extra = sorted(k for k in kept if k not in expected)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConversionError(f"unexpected tensor {extra[0]}{more}: not part of the thinker for this config")
    for key, shape in expected.items():
        if kept[key].shape != shape:
            raise ConversionError(
                f"tensor {key} has shape {list(kept[key].shape)}, config.json implies {list(shape)}"
            )
    return HfPlan(prefix, specs, kept, skipped)


def _leaf_dtype(spec: LeafSpec, plan: HfPlan, dtype: np.dtype | None) -> np.dtype:
    if dtype is not None:
        return dtype
    keys = spec.hf_keys()
    found = {plan.sources[plan.prefix + k].dtype for _, k in keys}
    if len(found) > 1:
        raise ConversionError(f"tensors of {'/'.join(spec.path)} mix dtypes {sorted(map(str, found))}")
    return found.pop()


def streamed_leaves(plan: HfPlan, dtype: np.dtype | None = None, bar=None) -> list:
    """One `StreamedLeaf` per canonical leaf: which HF tensors fill which blocks, read only when written."""
    from trainer.model_checkpoint import StreamedLeaf

    leaves = []
    for spec in plan.specs:
        out_dtype = _leaf_dtype(spec, plan, dtype)
        first = plan.sources[plan.prefix + spec.hf_keys()[0][1]]
        if spec.stack:
            # One chunk per layer (or layer x expert) slice: contiguous, and a restore sharded over layers
            # or experts reads only its own chunks.
            chunk = (1,) * len(spec.stack) + spec.slice_shape
            fill = _stacked_filler(spec, plan, bar)
        elif spec.kind in ("copy", "T") and len(first.shape) == 2:
            rows = max(1, min(first.shape[0], BLOCK_BYTES // (first.nbytes // first.shape[0])))
            chunk = (rows, first.shape[1]) if spec.kind == "copy" else (first.shape[1], rows)
            fill = _blockwise_filler(spec, first, rows, bar)
        else:
            chunk = spec.shape
            fill = _whole_filler(spec, first, bar)
        leaves.append(StreamedLeaf(spec.path, spec.shape, out_dtype, chunk, fill))
    return leaves


def _stacked_filler(spec: LeafSpec, plan: HfPlan, bar):
    def fill(put) -> None:
        for idx, key in spec.hf_keys():
            piece = spec.to_canonical(read_tensor(plan.sources[plan.prefix + key]))
            put(idx, piece)
            if bar is not None:
                bar.update(piece.nbytes)

    return fill


def _blockwise_filler(spec: LeafSpec, info: TensorInfo, rows: int, bar):
    """Large 2-D tensors (embedding, lm_head) in row blocks of the HF tensor (contiguous on disk)."""

    def fill(put) -> None:
        for start in range(0, info.shape[0], rows):
            block = read_rows(info, start, min(start + rows, info.shape[0]))
            if spec.kind == "T":
                put((slice(None), slice(start, start + len(block))), block.T)
            else:
                put(slice(start, start + len(block)), block)
            if bar is not None:
                bar.update(block.nbytes)

    return fill


def _whole_filler(spec: LeafSpec, info: TensorInfo, bar):
    def fill(put) -> None:
        piece = spec.to_canonical(read_tensor(info))
        put((), piece)
        if bar is not None:
            bar.update(piece.nbytes)

    return fill


def hf_to_orbax(
    hf_dir: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    *,
    log=print,
    show_progress: bool = True,
) -> dict:
    """Converts an HF checkpoint directory into a model checkpoint directory (interface 6).

    Args:
        hf_dir: what `save_pretrained` wrote: config.json, safetensors (+ index), tokenizer files.
        out_dir: the model checkpoint to create (must not exist or be empty).
        dtype: "bf16" or "fp32" to cast; None keeps the stored dtype (bit-exact).

    Returns:
        A summary: leaves, tensors read, skipped counts per group, prefix, bytes.
    """
    from core.fileio import atomic_write_json, atomic_write_text
    from core.progress import progress
    from trainer.model.config import ModelConfig
    from trainer.model_checkpoint import (
        HF_LAYOUT_FILE,
        MODEL_CONFIG_FILE,
        PARAMS_DIR,
        copy_companion_files,
        write_params_streaming,
    )

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json (expected a save_pretrained directory)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    cast = DTYPES[dtype] if dtype else None
    tensors = open_checkpoint(hf_dir)
    plan = plan_hf(tensors, ModelConfig.from_hf_json(hf_dir))
    stored = {t.dtype for t in plan.sources.values()}
    param_dtype = cast if cast is not None else (stored.pop() if len(stored) == 1 else np.dtype(np.float32))
    model_config = ModelConfig.from_hf_json(
        hf_dir, param_dtype=DTYPE_NAMES.get(np.dtype(param_dtype), "float32")
    )
    for group, n in sorted(plan.skipped.items()):
        log(f"skipping {n} {group}.* tensors (not used by the ASR thinker)")
    total = sum(t.nbytes for t in plan.sources.values())
    log(
        f"converting {len(plan.sources)} tensors ({total / 1e9:.2f} GB) into {len(plan.specs)} stacked leaves"
    )

    staging = out_dir.with_name(out_dir.name + ".converting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    bar = progress(None, total=total, desc="hf-to-orbax", unit="B") if show_progress else None
    try:
        write_params_streaming(staging / PARAMS_DIR, streamed_leaves(plan, cast, bar))
    finally:
        if bar is not None:
            bar.close()
    copied = copy_companion_files(hf_dir, staging)
    atomic_write_text(staging / MODEL_CONFIG_FILE, model_config.model_dump_json(indent=2) + "\n")
    atomic_write_json(
        staging / HF_LAYOUT_FILE,
        {
            "prefix": plan.prefix,
            "dtypes": {k: str(v.dtype) for k, v in plan.sources.items()} if cast is None else {},
            "skipped": dict(plan.skipped),
        },
    )
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(staging, out_dir)
    log(f"wrote {out_dir} (copied {', '.join(copied) or 'no companion files'})")
    return {
        "leaves": len(plan.specs),
        "tensors": len(plan.sources),
        "skipped": dict(plan.skipped),
        "prefix": plan.prefix,
        "bytes": total,
    }


def orbax_to_hf(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    prefix: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    log=print,
    show_progress: bool = True,
) -> dict:
    """Exports a model checkpoint (or trainer run/step directory) to HF safetensors with HF key names.

    Args:
        ckpt: anything `resolve_checkpoint` accepts.
        out_dir: the HF directory to create (must not exist or be empty).
        prefix: key prefix (``"thinker."`` or ``""``); default: what the converted source used, else
            ``"thinker."`` (the released checkpoint's layout).
        max_shard_bytes: shard size; a single `model.safetensors` when everything fits.
    """
    from core.progress import progress
    from trainer.model_checkpoint import (
        PARAMS_DIR,
        copy_companion_files,
        load_model_config,
        params_metadata,
        read_hf_layout,
        read_params,
        resolve_checkpoint,
    )

    root = resolve_checkpoint(ckpt)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    config = load_model_config(root)
    layout = read_hf_layout(root)
    if prefix is None:
        prefix = layout.get("prefix", THINKER_PREFIX)
    specs = leaf_specs(config)
    meta = params_metadata(root)
    for spec in specs:
        if spec.path not in meta:
            raise ConversionError(f"{root}: parameter {'/'.join(spec.path)} is missing")
        if meta[spec.path][0] != spec.shape:
            raise ConversionError(
                f"{root}: parameter {'/'.join(spec.path)} has shape {list(meta[spec.path][0])}, "
                f"model_config.json implies {list(spec.shape)}"
            )
    plan = [
        PlannedTensor(prefix + key, meta[spec.path][1], spec.hf_shape)
        for spec in specs
        for _, key in spec.hf_keys()
    ]
    staging = out_dir.with_name(out_dir.name + ".exporting")
    shutil.rmtree(staging, ignore_errors=True)
    writer = ShardedWriter(staging, plan, max_shard_bytes)
    bar = progress(None, total=writer.total_bytes, desc="orbax-to-hf", unit="B") if show_progress else None
    try:
        for spec in specs:
            leaf = _open_leaf(root / PARAMS_DIR, spec.path, read_params)
            for idx, key in spec.hf_keys():
                tensor = spec.to_hf(np.asarray(leaf[idx]))
                writer.write(prefix + key, tensor)
                if bar is not None:
                    bar.update(tensor.nbytes)
            del leaf
        writer.close()
    finally:
        if bar is not None:
            bar.close()
    copy_companion_files(root, staging)
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(staging, out_dir)
    log(f"wrote {len(plan)} tensors ({writer.total_bytes / 1e9:.2f} GB) to {out_dir}")
    return {"tensors": len(plan), "bytes": writer.total_bytes, "prefix": prefix}


class _ZarrLeaf:
    """Reads slices of one plain-zarr3 leaf on demand (what `sawt convert` writes), never the whole leaf."""

    def __init__(self, array_dir: Path):
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir)}}
        self._store = ts.open(spec, open=True).result()

    def __getitem__(self, index) -> np.ndarray:
        return self._store[index].read().result()


def _open_leaf(params_dir: Path, path: tuple[str, ...], read_params):
    """A sliceable view of one leaf: streamed from a plain zarr3 array, else (OCDBT, as the trainer
    writes) restored whole by Orbax."""
    array_dir = params_dir / ".".join(path)
    if (array_dir / "zarr.json").is_file():
        return _ZarrLeaf(array_dir)
    return read_params(params_dir, [path])[path]


def main(args: argparse.Namespace) -> int:
    """Entry point of `sawt convert` (see sawt/commands/convert.py)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion is host work; do not grab an accelerator
    from core.errors import UsageError
    from tools.hf.safetensors_io import SafetensorsError

    quiet = getattr(args, "quiet", False)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    try:
        if args.convert_command == "hf-to-orbax":
            summary = hf_to_orbax(args.hf, args.out, args.dtype, log=log, show_progress=not quiet)
        else:
            prefix = {"auto": None, "thinker": THINKER_PREFIX, "none": ""}[args.prefix]
            summary = orbax_to_hf(
                args.ckpt,
                args.out,
                prefix=prefix,
                max_shard_bytes=int(args.max_shard_gb * 1e9),
                log=log,
                show_progress=not quiet,
            )
    except (ConversionError, SafetensorsError, FileExistsError) as err:
        raise UsageError(str(err)) from None
    print(json.dumps(summary))
    return 0
