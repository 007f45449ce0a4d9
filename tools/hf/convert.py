"""HF safetensors <-> model checkpoint (Orbax) conversion, streaming one stacked tensor at a time.

hf-to-orbax: read the HF headers, check every expected tensor is there with the right shape (and nothing
unexpected), then for each canonical leaf allocate the stacked array, read each per-layer/per-expert HF
tensor into a small buffer, permute it into its slice, and hand the finished leaf to Orbax before building
the next. Peak memory is the largest stacked leaf plus one HF tensor plus Orbax's write chunk.

orbax-to-hf: restore one leaf at a time and write its HF tensors at their offsets in HF-style shards (with a
base release: its shard layout, every tensor sawt does not hold copied byte for byte).

`read_hf_params` runs the import's path into memory instead of Orbax (tests and tools that want a tree): one
key map (`tools.hf.key_map`) and one reading path for every consumer.
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

from tools.hf.config import read_model_config
from tools.hf.key_map import SKIPPED_GROUPS, LeafSpec, leaf_specs
from tools.hf.safetensors_io import (
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_FILE,
    SINGLE_FILE,
    PlannedTensor,
    ShardedWriter,
    TensorInfo,
    open_checkpoint,
    plan_shards,
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


def read_hf_params(hf_dir: str | Path, dtype: str | None = None, **overrides):
    """``(ModelConfig, canonical tree of numpy arrays)`` of an HF directory, by the import's own path.

    The same plan, checks and slice fillers as `hf_to_orbax`, writing into arrays instead of Orbax.
    """
    from trainer.model.tree import unflatten

    hf_dir = Path(hf_dir)
    cast = DTYPES[dtype] if dtype else None
    config = read_model_config(hf_dir, **overrides)
    plan = plan_hf(open_checkpoint(hf_dir), config)
    flat = {}
    for leaf in streamed_leaves(plan, cast):
        array = np.empty(leaf.shape, leaf.dtype)

        def put(index, block, array=array):
            array[index] = block

        leaf.fill(put)
        flat[leaf.path] = array
    return config, unflatten(flat)


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
    plan = plan_hf(tensors, read_model_config(hf_dir))
    stored = {t.dtype for t in plan.sources.values()}
    param_dtype = cast if cast is not None else (stored.pop() if len(stored) == 1 else np.dtype(np.float32))
    model_config = read_model_config(hf_dir, param_dtype=DTYPE_NAMES.get(np.dtype(param_dtype), "float32"))
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


# Files of an HF release directory besides config.json and the weights, taken from the run (what it trained
# with) or, when the run lacks one, from --base.
EXPORT_FILES = ("generation_config.json", "preprocessor_config.json")


@dataclass
class ExportPlan:
    """What an export writes: where each tensor goes, and which ones come byte for byte from the base."""

    shards: list[tuple[str, list[PlannedTensor]]]
    held: dict[str, tuple[LeafSpec, tuple[int, ...]]]  # tensors sawt holds: full key -> (leaf, slice index)
    copied: dict[str, TensorInfo]  # tensors taken unchanged from the base
    prefix: str


def _held_tensors(specs: list[LeafSpec], prefix: str) -> dict[str, tuple[LeafSpec, tuple[int, ...]]]:
    return {prefix + key: (spec, idx) for spec in specs for idx, key in spec.hf_keys()}


def _base_shards(base: Path) -> list[tuple[str, list[TensorInfo]]]:
    """The base's shard files in order, each with its tensors in file order."""
    tensors = open_checkpoint(base)
    files: dict[str, list[TensorInfo]] = {}
    for info in tensors.values():
        files.setdefault(info.file.name, []).append(info)
    return [(name, sorted(infos, key=lambda t: t.offset)) for name, infos in sorted(files.items())]


def check_base_matches(base: Path, config) -> None:
    """Checks that the base release has the checkpoint's architecture (the export keeps its config.json).

    Raises:
        ConversionError: naming the first field that differs.
    """

    theirs = read_model_config(base)
    for section in ("audio", "text", "tokens"):
        mine_d, theirs_d = getattr(config, section).model_dump(), getattr(theirs, section).model_dump()
        for key, value in mine_d.items():
            if section == "tokens" and key in ("eos_token_ids", "pad_token_id"):
                continue  # generation settings, not weights
            if theirs_d.get(key) != value:
                raise ConversionError(
                    f"--base {base}: its config.json has {section}.{key}={theirs_d.get(key)}, the checkpoint "
                    f"{value}; export onto the release this checkpoint was converted from"
                )


def plan_export(
    specs: list[LeafSpec],
    stored: dict[tuple[str, ...], np.dtype],
    *,
    base: Path | None,
    prefix: str,
    dtype: np.dtype | None,
    source_dtypes: dict[str, str],
    max_shard_bytes: int,
) -> ExportPlan:
    """Where every tensor of the export goes.

    With a base, the export mirrors it exactly: its shard files, its tensors in its order and dtypes; the
    tensors sawt holds replace the base's (cast to the base's dtype, or ``dtype``), all others are copied.
    Without one: sawt's tensors in table order, in the source's dtypes (hf_layout.json), else as stored.

    Raises:
        ConversionError: the base lacks a tensor sawt holds, or holds a thinker tensor sawt does not know.
    """
    if base is None:
        held = _held_tensors(specs, prefix)

        def out_dtype(key: str, spec: LeafSpec) -> np.dtype:
            if dtype is not None:
                return dtype
            if key in source_dtypes:
                return (
                    np.dtype(ml_dtypes.bfloat16)
                    if source_dtypes[key] == "bfloat16"
                    else np.dtype(source_dtypes[key])
                )
            return stored[spec.path]

        plan = [PlannedTensor(k, out_dtype(k, spec), spec.hf_shape) for k, (spec, _) in held.items()]
        cut = plan_shards(plan, max_shard_bytes)
        names = (
            [SINGLE_FILE]
            if len(cut) == 1
            else [f"model-{i + 1:05d}-of-{len(cut):05d}.safetensors" for i in range(len(cut))]
        )
        return ExportPlan(list(zip(names, cut, strict=True)), held, {}, prefix)
    shards = _base_shards(base)
    names = {t.name for _, infos in shards for t in infos}
    prefix = THINKER_PREFIX if any(n.startswith(THINKER_PREFIX) for n in names) else ""
    held = _held_tensors(specs, prefix)
    missing = sorted(set(held) - names)
    if missing:
        raise ConversionError(f"--base {base}: has no tensor {missing[0]}, which the checkpoint holds")
    unknown = sorted(n for n in names if n not in held and _group(n) is None)
    if unknown:
        raise ConversionError(
            f"--base {base}: tensor {unknown[0]} is part of the thinker but not of the checkpoint's key map"
        )
    copied: dict[str, TensorInfo] = {}
    layout = []
    for file, infos in shards:
        planned = []
        for info in infos:
            if info.name in held:
                spec = held[info.name][0]
                if info.shape != spec.hf_shape:
                    raise ConversionError(
                        f"--base {base}: tensor {info.name} has shape {list(info.shape)}, the checkpoint "
                        f"{list(spec.hf_shape)}"
                    )
                planned.append(
                    PlannedTensor(info.name, dtype if dtype is not None else info.dtype, info.shape)
                )
            else:
                copied[info.name] = info
                planned.append(PlannedTensor(info.name, info.dtype, info.shape))
        layout.append((file, planned))
    return ExportPlan(layout, held, copied, prefix)


def orbax_to_hf(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    dtype: str | None = None,
    prefix: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    log=print,
    show_progress: bool = True,
) -> dict:
    """Exports a model checkpoint, trainer step or run directory as a complete HF directory.

    Writes sharded safetensors + `model.safetensors.index.json`, `config.json`, the tokenizer files,
    `chat_template.json`, `preprocessor_config.json` and `generation_config.json` (docs/convert.md).

    With ``base`` (the release the checkpoint came from) the export is a drop-in replacement for it: the
    base's config.json and shard layout, every tensor sawt does not hold (`thinker.visual.*`, `talker.*`,
    `code2wav.*`) copied byte for byte, sawt's tensors in the base's dtypes. Without it: the thinker alone
    (`enable_audio_output: false`).

    Memory: one leaf of the checkpoint (a slice of it for checkpoints `sawt convert` wrote) plus one HF
    tensor; base tensors are copied file to file in bounded blocks.

    Args:
        ckpt: anything `resolve_checkpoint` accepts (a run directory: its best step by WER, else latest).
        out_dir: the HF directory to create (must not exist or be empty).
        base: an HF release directory to complete the export from.
        dtype: "bf16" or "fp32" for the tensors sawt writes; default: the base's dtypes, else the source's.
        prefix: key prefix without a base (``"thinker."`` or ``""``); default: what the converted source
            used, else ``"thinker."`` (the release's layout).
        max_shard_bytes: shard size without a base; a single `model.safetensors` when everything fits.
    """
    from core.progress import progress
    from trainer.model_checkpoint import (
        PARAMS_DIR,
        companion_dir,
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
    base = Path(base) if base is not None else None
    if base is not None and not (base / "config.json").is_file():
        raise FileNotFoundError(f"--base {base}: no config.json (expected the HF release directory)")
    config = load_model_config(root)
    files = companion_dir(ckpt, root)
    layout = read_hf_layout(files) if files is not None else {}
    layout = layout or read_hf_layout(root)
    if base is not None:
        check_base_matches(base, config)
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
    plan = plan_export(
        specs,
        {path: m[1] for path, m in meta.items()},
        base=base,
        prefix=layout.get("prefix", THINKER_PREFIX) if prefix is None else prefix,
        dtype=DTYPES[dtype] if dtype else None,
        source_dtypes=layout.get("dtypes", {}),
        max_shard_bytes=max_shard_bytes,
    )
    planned = {t.name: t for _, ts in plan.shards for t in ts}
    staging = out_dir.with_name(out_dir.name + ".exporting")
    shutil.rmtree(staging, ignore_errors=True)
    writer = ShardedWriter(staging, shards=plan.shards)
    bar = progress(None, total=writer.total_bytes, desc="orbax-to-hf", unit="B") if show_progress else None
    try:
        keys_of: dict[tuple[str, ...], list[tuple[tuple[int, ...], str]]] = {}
        for key, (spec, idx) in plan.held.items():
            keys_of.setdefault(spec.path, []).append((idx, key))
        for spec in specs:
            leaf = _open_leaf(root / PARAMS_DIR, spec.path, read_params)
            for idx, key in keys_of[spec.path]:
                dtype_out = planned[key].dtype
                for first_row, block in _hf_blocks(spec, leaf, idx):
                    block = block.astype(dtype_out, copy=False)
                    writer.write(key, block, first_row)
                    if bar is not None:
                        bar.update(block.nbytes)
                    del block
            del leaf
        for name, info in plan.copied.items():
            writer.copy(name, info)
            if bar is not None:
                bar.update(info.nbytes)
        writer.close(index_metadata=_index_metadata(base) if base is not None else None)
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    written = _write_export_files(staging, config, files, base)
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(staging, out_dir)
    log(
        f"wrote {len(plan.held)} tensors from the checkpoint and {len(plan.copied)} from the base "
        f"({writer.total_bytes / 1e9:.2f} GB) and {', '.join(written)} to {out_dir}"
    )
    return {
        "tensors": len(plan.held) + len(plan.copied),
        "from_checkpoint": len(plan.held),
        "from_base": len(plan.copied),
        "bytes": writer.total_bytes,
        "prefix": plan.prefix,
        "checkpoint": str(root),
        "files": written,
    }


def _hf_blocks(spec: LeafSpec, leaf, idx: tuple[int, ...]):
    """One HF tensor of a leaf slice, as ``(first row or None, array)`` pieces.

    Big unstacked 2-D leaves (embedding, lm_head) come in row blocks of the HF tensor, read as slices of the
    leaf, so neither the leaf nor its transpose is ever whole in memory (the import's blocks, reversed).
    """
    if spec.stack or spec.kind not in ("copy", "T") or len(spec.hf_shape) != 2:
        yield None, spec.to_hf(np.asarray(leaf[idx]))
        return
    n_rows, n_cols = spec.hf_shape
    rows = max(1, min(n_rows, BLOCK_BYTES // max(1, n_cols * 4)))
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        if spec.kind == "T":  # kernel [in, out]: HF rows are kernel columns
            yield start, np.ascontiguousarray(np.asarray(leaf[:, start:stop]).T)
        else:
            yield start, np.asarray(leaf[start:stop])


def _index_metadata(base: Path) -> dict:
    index = base / INDEX_FILE
    return json.loads(index.read_text()).get("metadata", {}) if index.is_file() else {}


def _write_export_files(out: Path, config, files: Path | None, base: Path | None) -> list[str]:
    """config.json, tokenizer, chat template, preprocessor and generation configs of an export."""
    from core.fileio import atomic_write_json
    from tools.hf.config import PREPROCESSOR_CONFIG, generation_config_dict, hf_config_dict, thinker_only
    from trainer.data.text import TOKENIZER_FILES

    written = []

    def put(name: str, source: Path) -> None:
        shutil.copy2(source, out / name)
        written.append(name)

    if base is not None:
        put("config.json", base / "config.json")
    elif files is not None and (files / "config.json").is_file():
        atomic_write_json(out / "config.json", thinker_only(json.loads((files / "config.json").read_text())))
        written.append("config.json")
    else:
        atomic_write_json(out / "config.json", thinker_only(hf_config_dict(config)))
        written.append("config.json")
    for name in sorted(TOKENIZER_FILES):
        if files is not None and (files / name).is_file():
            put(name, files / name)
    for name in EXPORT_FILES:
        if files is not None and (files / name).is_file():
            put(name, files / name)
        elif base is not None and (base / name).is_file():
            put(name, base / name)
        elif name == "generation_config.json":
            atomic_write_json(out / name, generation_config_dict(config))
            written.append(name)
        else:
            atomic_write_json(out / name, PREPROCESSOR_CONFIG)
            written.append(name)
    if base is not None:  # the processor template, when the run's tokenizer came without one
        for name in ("chat_template.json", "chat_template.jinja"):
            if (
                name not in written
                and (base / name).is_file()
                and not any(n.startswith("chat_template") for n in written)
            ):
                put(name, base / name)
    return written


class _ZarrLeaf:
    """Reads slices of one plain-zarr3 leaf on demand (what `sawt convert` writes), never the whole leaf."""

    def __init__(self, array_dir: Path):
        import tensorstore as ts

        from trainer.model_checkpoint import is_gcs

        # tensorstore reads gs:// itself (its GCS driver); a local array through the file driver.
        kvstore = (
            os.fspath(array_dir) + "/" if is_gcs(array_dir) else {"driver": "file", "path": str(array_dir)}
        )
        spec = {"driver": "zarr3", "kvstore": kvstore}
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
                base=args.base,
                dtype=args.dtype,
                prefix=prefix,
                max_shard_bytes=int(args.max_shard_gb * 1e9),
                log=log,
                show_progress=not quiet,
            )
    except (ConversionError, SafetensorsError, FileExistsError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    print(json.dumps(summary))
    return 0
