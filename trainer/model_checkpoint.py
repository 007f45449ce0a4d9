"""The model checkpoint directory (interfaces §6): what `sawt convert` writes and the trainer/server load.

Layout::

    DIR/model_config.json   our ModelConfig as JSON
    DIR/params/             Orbax PyTree checkpoint of the canonical parameter tree (interface 4)
    DIR/config.json, tokenizer.json, tokenizer_config.json, chat_template.json, preprocessor_config.json, ...
                            copied from the HF checkpoint (or the demo tokenizer)
    DIR/hf_layout.json      (optional) how the HF source named its tensors, so an export restores the names

A trainer step directory (``RUN/checkpoints/<step>/``) holds the same ``params`` item and
``model_config.json``, so `resolve_checkpoint` accepts a model checkpoint, a step directory or a run
directory (its best step by validation WER, else its latest complete step) alike, locally or on ``gs://``.
A run directory is self-describing: ``RUN/model/`` holds the companion files the run trained with (tokenizer,
HF config, processor and generation configs, `hf_layout.json`) and ``prompt.json``, the prompt it trained
on; `companion_dir` finds them for any of the three. A run whose checkpoints went to ``checkpoint.dir``
elsewhere (``gs://``) records that in ``RUN/config.yaml``, and `resolve_checkpoint` follows it.

`write_params` saves one leaf at a time with Orbax's partial-save API and then merges the pieces into one
ordinary PyTree checkpoint, so peak memory is one leaf (not the whole model); host arrays are not
deep-copied and are written in bounded chunks for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from core.fileio import atomic_write_text
from trainer.data.text import (
    PromptStyle,
    Tokenizer,
    TokenizerError,
    check_model_ids,
    check_prompt_record,
    has_tokenizer,
    load_tokenizer,
)
from trainer.model.tree import flatten, path_name, unflatten

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
HF_LAYOUT_FILE = "hf_layout.json"
COMMIT_MARKER = "commit_success.txt"
# In a run directory: the companion files the run trained with, and the prompt it trained on.
RUN_MODEL_DIR = "model"
PROMPT_FILE = "prompt.json"
# A trainer step's metadata item (trainer/checkpoint.py), which records the step's validation WER.
TRAIN_META_FILE = "train_meta/train_meta.json"
# Orbax's record of the metrics a step was saved with (CheckpointManager with best_fn).
ORBAX_METRICS_FILE = "metrics/metrics"
# Files next to the weights that a model checkpoint carries along (tokenizer, processor, HF config).
COMPANION_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
WEIGHT_FILE_PATTERN = re.compile(r".*\.(safetensors|bin|pt|pth|msgpack|h5)$|.*\.safetensors\.index\.json$")
# Chunks of at most this size bound the memory Orbax/tensorstore use while writing one big leaf.
WRITE_CHUNK_BYTES = 32 << 20

PyTree = Any


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    tree: Any = value
    for name in reversed(path):
        tree = {name: tree}
    return tree


def _leaf_context(shard_axes: tuple[int, ...]):
    """Orbax save options for one leaf, chosen so that writing it needs little memory beyond the leaf."""
    import orbax.checkpoint.experimental.v1 as ocp1

    context = ocp1.Context()
    # The caller hands us each leaf and never mutates it, so the defensive deep copy would only double memory.
    context.memory.deepcopy_host_arrays = False
    # OCDBT buffers a whole array's encoded chunks until its transaction commits (a second copy of the
    # leaf); plain zarr3 writes chunk files as they are encoded, so memory is bounded by chunks in flight.
    context.array.saving.use_ocdbt = False
    context.array.saving.storage_options.chunk_byte_size = WRITE_CHUNK_BYTES
    # One chunk per stacked slice (layer, or layer x expert): contiguous chunks, and a restore sharded by
    # layer or expert reads only its own chunks.
    context.array.saving.storage_options.shard_axes = tuple(shard_axes)
    # Weights barely compress (a few %), and zstd would make conversion CPU-bound.
    context.array.saving.use_compression = False
    return context


def _release_freed_memory() -> None:
    """Returns freed heap to the OS: tensorstore's write buffers otherwise stay in RSS after each leaf."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def write_params(
    directory: str | Path,
    leaves: Iterable[tuple[tuple[str, ...], Any]],
    shard_axes: Callable[[tuple[str, ...]], tuple[int, ...]] | None = None,
) -> None:
    """Writes an Orbax PyTree checkpoint at ``directory`` one leaf at a time.

    Each leaf is written by its own Orbax partial save; `finalize` then merges them into one ordinary PyTree
    checkpoint. Peak memory is one leaf plus the chunks in flight (`WRITE_CHUNK_BYTES` each).

    Args:
        directory: the checkpoint to create (must not exist).
        leaves: ``(path, array)`` pairs; each array may be dropped by the caller once the next is requested,
            so a generator that builds leaves lazily keeps only one in memory.
        shard_axes: for a leaf path, the leading stacked axes to split storage chunks on (default: none).
    """
    from orbax.checkpoint.experimental.v1 import partial

    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists")
    staging = directory.with_name(directory.name + ".staging")
    for leftover in (staging, staging.with_name(staging.name + ".partial_save")):
        shutil.rmtree(leftover, ignore_errors=True)  # an interrupted earlier attempt
    wrote = False
    for path, value in leaves:
        with _leaf_context(shard_axes(tuple(path)) if shard_axes else ()):
            partial.save(staging, _nest(tuple(path), value))
        # Drop our reference before the generator builds the next leaf, so two never coexist.
        del value
        _release_freed_memory()
        wrote = True
    if not wrote:
        raise ValueError("no parameters to save")
    with _leaf_context(()):
        partial.finalize(staging)
    # The finalized partial save is a v1 checkpoint whose pytree lives in `state/`; that directory is an
    # ordinary PyTree checkpoint, which is what interface 6 puts at DIR/params.
    os.rename(staging / "state", directory)
    shutil.rmtree(staging)
    # On gs:// Orbax restores only a directory with this marker (its commit-file protocol); writing it here
    # keeps a converted checkpoint restorable after it is copied to a bucket. Locally it is ignored.
    (directory / COMMIT_MARKER).write_text("written by sawt (trainer/model_checkpoint.py)\n")


@dataclass(frozen=True)
class StreamedLeaf:
    """A leaf written piece by piece (see `write_params_streaming`).

    Attributes:
        path: its path in the tree.
        shape, dtype: of the whole leaf.
        chunk_shape: storage chunk; `fill` should write whole chunks.
        fill: called once with ``put(index, block)``, which writes ``block`` at ``leaf[index]`` and returns
            when it is on disk.
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_shape: tuple[int, ...]
    fill: Callable[[Callable[[Any, np.ndarray], None]], None]


def write_params_streaming(directory: str | Path, leaves: Iterable[StreamedLeaf]) -> None:
    """Writes an Orbax PyTree checkpoint whose leaves are never whole in memory.

    Orbax writes the tree (its `_METADATA` and one zarr3 array per leaf) from tiny placeholders of the right
    rank and dtype; each array is then recreated at its full shape with the same codecs and filled through
    TensorStore one block at a time, each block on disk before the next is read. A restore reads the
    shape from the array's own zarr metadata, so the result is an ordinary Orbax checkpoint (the tests
    restore it with Orbax, with and without target shardings). Peak memory is one block, whatever the leaf
    size: Orbax's own write of a big array keeps encoded chunks queued for the disk, up to another copy.
    """
    import tensorstore as ts

    leaves = list(leaves)
    directory = Path(directory)
    write_params(directory, ((leaf.path, np.zeros((1,) * len(leaf.shape), leaf.dtype)) for leaf in leaves))
    for leaf in leaves:
        array_dir = directory / ".".join(leaf.path)
        meta = json.loads((array_dir / "zarr.json").read_text())
        if meta.get("zarr_format") != 3:
            raise RuntimeError(
                f"{array_dir}: expected a zarr3 array from Orbax, found {meta.get('zarr_format')}"
            )
        meta["shape"] = list(leaf.shape)
        meta["chunk_grid"]["configuration"]["chunk_shape"] = list(leaf.chunk_shape)
        for codec in meta["codecs"]:
            if codec["name"] == "sharding_indexed":  # one inner chunk per shard, as Orbax writes it
                codec["configuration"]["chunk_shape"] = list(leaf.chunk_shape)
        shutil.rmtree(array_dir)
        store = ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir)}, "metadata": meta},
            create=True,
        ).result()

        def put(index: Any, block: np.ndarray, store=store, dtype=leaf.dtype) -> None:
            store[index].write(np.asarray(block, dtype=dtype)).result()

        leaf.fill(put)
        del store
        _release_freed_memory()


def _param_metadata(params_dir: epath.Path) -> dict[tuple[str, ...], Any]:
    import orbax.checkpoint as ocp

    meta = ocp.PyTreeCheckpointer().metadata(params_dir)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        tree = meta.item_metadata
    return flatten(tree)


def params_metadata(directory: str | Path) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    """``{path: (shape, dtype)}`` of a model checkpoint's params, read without loading any array."""
    params_dir = resolve_checkpoint(directory) / PARAMS_DIR
    return {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in _param_metadata(params_dir).items()}


def read_params(
    params_dir: str | os.PathLike[str],
    paths: Iterable[tuple[str, ...]] | None = None,
    *,
    dtype: Any = None,
    shardings: Mapping[tuple[str, ...], Any] | None = None,
) -> dict[tuple[str, ...], Any]:
    """Restores some (default: all) leaves of a params checkpoint.

    Args:
        params_dir: the Orbax PyTree checkpoint directory.
        paths: which leaves; None for all.
        dtype: cast every leaf to this dtype while reading; None keeps the stored dtype.
        shardings: ``{path: jax.sharding.Sharding}`` to place each leaf on a mesh; without it the leaves come
            back as host numpy arrays.

    Returns:
        ``{path: array}``.
    """
    import jax
    import orbax.checkpoint as ocp

    params_dir = checkpoint_path(params_dir)
    meta = _param_metadata(params_dir)
    wanted = list(meta) if paths is None else [tuple(p) for p in paths]
    for path in wanted:
        if path not in meta:
            raise KeyError(f"{params_dir}: no parameter {path_name(path)}")
    item, restore_args = {}, {}
    for path in wanted:
        m = meta[path]
        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(m.dtype)
        sharding = (shardings or {}).get(path)
        if sharding is not None:
            item[path] = jax.ShapeDtypeStruct(tuple(m.shape), out_dtype, sharding=sharding)
            restore_args[path] = ocp.ArrayRestoreArgs(
                sharding=sharding, global_shape=tuple(m.shape), dtype=out_dtype
            )
        else:
            item[path] = np.empty((0,), out_dtype)  # structure only; numpy leaves restore as numpy
            restore_args[path] = ocp.RestoreArgs(restore_type=np.ndarray, dtype=out_dtype)
    restored = ocp.PyTreeCheckpointer().restore(
        params_dir,
        args=ocp.args.PyTreeRestore(
            item=unflatten(item), restore_args=unflatten(restore_args), partial_restore=paths is not None
        ),
    )
    flat = flatten(restored)
    return {path: flat[path] for path in wanted}


def save_model_checkpoint(
    directory: str | Path,
    params: Mapping[str, Any],
    model_config: Any,
    copy_files_from: str | Path | None = None,
) -> Path:
    """Writes a model checkpoint directory (interface 6) from an in-memory canonical tree.

    Args:
        directory: where to write; must not exist or be empty.
        params: the canonical nested dict of arrays (numpy or jax).
        model_config: a `trainer.model.config.ModelConfig`.
        copy_files_from: a directory whose tokenizer/config files (not weights) are copied next to it.

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    if copy_files_from is not None:
        copy_companion_files(copy_files_from, directory)
    write_params(directory / PARAMS_DIR, flatten(params).items())
    atomic_write_text(directory / MODEL_CONFIG_FILE, model_config.model_dump_json(indent=2) + "\n")
    return directory


def copy_companion_files(source: str | os.PathLike[str], dest: str | Path) -> list[str]:
    """Copies config, tokenizer and processor files (everything but weights) from ``source`` to ``dest``.

    ``source`` may be a ``gs://`` directory; ``dest`` is local.
    """
    source, dest = checkpoint_path(source), Path(dest)
    copied = []
    for f in sorted(source.iterdir(), key=lambda p: p.name):
        if WEIGHT_FILE_PATTERN.match(f.name) or f.name in (MODEL_CONFIG_FILE, HF_LAYOUT_FILE):
            continue
        if not (f.suffix in COMPANION_SUFFIXES or f.name.startswith("tokenizer")) or not f.is_file():
            continue
        if is_gcs(f):
            (dest / f.name).write_bytes(f.read_bytes())
        else:
            shutil.copy2(os.fspath(f), dest / f.name)
        copied.append(f.name)
    return copied


def checkpoint_path(path: str | os.PathLike[str]) -> epath.Path:
    """``path`` as an `epath.Path`: a local path or a ``gs://`` URI alike (pathlib would mangle ``gs://``).

    A local path is made absolute: Orbax refuses a relative directory for an OCDBT checkpoint that several
    processes wrote (``ocdbt.process_N/``, as a multi-process run saves), so `sawt transcribe --checkpoint
    build/demo/run` failed after the 2-process demo while an absolute path worked.
    """
    return epath.Path(path if is_gcs(path) else os.path.abspath(path))


def is_gcs(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).startswith("gs://")


def _is_checkpoint(path: epath.Path) -> bool:
    return (path / MODEL_CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def step_wer(step_dir: str | os.PathLike[str]) -> float | None:
    """The validation WER a trainer step recorded (None when it was not evaluated).

    Read from the step's ``train_meta`` item, else from Orbax's own metrics record of the step; either is
    written by `trainer.checkpoint.Checkpointer.save` for an evaluated step.
    """
    step_dir = checkpoint_path(step_dir)
    for record in (TRAIN_META_FILE, ORBAX_METRICS_FILE):
        try:
            wer = json.loads((step_dir / record).read_text()).get("wer")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(wer, int | float):
            return float(wer)
    return None


def _complete_steps(path: epath.Path) -> list[tuple[int, epath.Path]]:
    steps = [(int(p.name), p) for p in path.iterdir() if p.name.isdigit() and p.is_dir()]
    # With the commit-file protocol (GCS, FUSE) a step is complete only once commit_success.txt is there;
    # with atomic rename a numeric directory is complete by construction (in-flight ones carry a tmp suffix).
    if any((p / COMMIT_MARKER).exists() for _, p in steps):
        steps = [(s, p) for s, p in steps if (p / COMMIT_MARKER).exists()]
    return sorted((s, p) for s, p in steps if _is_checkpoint(p))


def recorded_checkpoint_dir(run_dir: str | os.PathLike[str]) -> epath.Path | None:
    """Where a trainer run directory keeps its checkpoints when ``checkpoint.dir`` put them elsewhere.

    `sawt train` writes the run's config to ``RUN_DIR/config.yaml``; a run whose logs live on a mounted path
    and whose checkpoints live at ``checkpoint.dir=gs://...`` is found from its run directory through it.
    """
    import yaml

    config = checkpoint_path(run_dir) / "config.yaml"
    try:
        recorded = (yaml.safe_load(config.read_text()) or {}).get("checkpoint", {}).get("dir")
    except (FileNotFoundError, NotADirectoryError, yaml.YAMLError, AttributeError):
        return None
    return checkpoint_path(recorded) if recorded else None


def _best_or_latest(steps: list[tuple[int, epath.Path]]) -> epath.Path:
    """The step with the lowest recorded validation WER (the latest among equals), else the latest step."""
    scored = [(wer, step, p) for step, p in steps if (wer := step_wer(p)) is not None]
    if scored:
        return min(scored, key=lambda t: (t[0], -t[1]))[2]
    return steps[-1][1]


def resolve_checkpoint(path: str | os.PathLike[str]) -> epath.Path:
    """The model checkpoint directory that ``path`` denotes (a local path or ``gs://``).

    Accepts
    - a model checkpoint (``model_config.json`` + ``params/``) or a trainer step directory (same layout);
    - a trainer run directory or its checkpoint root: its best complete step by recorded validation WER, or
      its latest complete step when no step was evaluated. The steps are looked for in ``path``,
      ``path/checkpoints`` and, for a run whose checkpoints went elsewhere (``checkpoint.dir=gs://...``),
      in the ``checkpoint.dir`` its ``config.yaml`` records;
    - ``RUN_DIR/checkpoints/STEP``, a pinned step, also when the steps live at the recorded ``checkpoint.dir``.

    Raises:
        FileNotFoundError: nothing usable there, with what was looked for.
    """
    path = checkpoint_path(path)
    if not path.exists() and path.parent.name == "checkpoints" and path.name.isdigit():
        recorded = recorded_checkpoint_dir(path.parent.parent)
        if recorded is not None:
            path = recorded / path.name
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if _is_checkpoint(path):
        return path
    candidates = [path, path / "checkpoints"]
    recorded = recorded_checkpoint_dir(path)
    if recorded is not None:
        candidates.append(recorded)
    for candidate in candidates:
        if candidate.is_dir():
            steps = _complete_steps(candidate)
            if steps:
                return _best_or_latest(steps)
    raise FileNotFoundError(
        f"{path}: not a model checkpoint (needs {MODEL_CONFIG_FILE} and {PARAMS_DIR}/), nor a run directory "
        "with complete numeric step directories (in it, in checkpoints/, or at the checkpoint.dir its "
        "config.yaml records)"
    )


def load_model_config(directory: str | Path) -> Any:
    """The ModelConfig stored in a checkpoint (resolved like `resolve_checkpoint`)."""
    from trainer.model.config import ModelConfig, drop_retired

    path = resolve_checkpoint(directory) / MODEL_CONFIG_FILE
    try:
        # A checkpoint written before a knob was retired still loads.
        return ModelConfig.model_validate(drop_retired(json.loads(path.read_text())))
    except ValueError as err:
        raise ValueError(f"{path}: not a valid model config: {err}") from None


def load_model_checkpoint(
    directory: str | Path, *, dtype: Any = None, shardings: PyTree | None = None
) -> tuple[Any, dict[str, Any]]:
    """Loads ``(ModelConfig, params)`` from a model checkpoint, step directory or run directory.

    Args:
        directory: see `resolve_checkpoint`.
        dtype: cast every parameter to this dtype (e.g. ``jnp.bfloat16``) while reading.
        shardings: a tree like the params (nested dict) of `jax.sharding.Sharding`, to restore straight onto
            a mesh; None gives host numpy arrays.
    """
    root = resolve_checkpoint(directory)
    config = load_model_config(root)
    flat_shardings = flatten(shardings) if shardings is not None else None
    leaves = read_params(root / PARAMS_DIR, dtype=dtype, shardings=flat_shardings)
    return config, unflatten(leaves)


def read_hf_layout(directory: str | Path) -> dict[str, Any]:
    """The recorded HF naming of a converted checkpoint (``{}`` when it was not converted from HF)."""
    path = checkpoint_path(directory) / HF_LAYOUT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def companion_dir(*checkpoints: str | os.PathLike[str]) -> Path | None:
    """Where the companion files of a checkpoint are (tokenizer, HF config, processor files), or None.

    Beside its params for a converted checkpoint; ``RUN/model/`` for a trainer run directory, its
    ``checkpoints/`` directory or one of its step directories (also ``RUN/checkpoints/STEP`` when the steps
    live at a ``checkpoint.dir`` elsewhere). Several paths are tried in order: pass the path the user gave
    before the resolved one, because a step resolved to ``gs://BUCKET/.../STEP`` has no ``RUN/model/`` near
    it. Companion files on ``gs://`` are fetched into a local directory (the tokenizer loaders read local
    files), once per process.
    """
    for checkpoint in checkpoints:
        path = checkpoint_path(checkpoint)
        for candidate in (
            path,
            path / RUN_MODEL_DIR,
            path.parent / RUN_MODEL_DIR,
            path.parent.parent / RUN_MODEL_DIR,
        ):
            if has_tokenizer(candidate):
                return _local_companions(candidate)
    return None


_FETCHED_COMPANIONS: dict[str, Path] = {}


def _local_companions(directory: epath.Path) -> Path:
    """``directory`` itself when local; a local copy of its companion files when it is on ``gs://``."""
    if not is_gcs(directory):
        return Path(directory)
    key = os.fspath(directory)
    if key not in _FETCHED_COMPANIONS:
        import tempfile

        local = Path(tempfile.mkdtemp(prefix="sawt-companions-"))
        copy_companion_files(directory, local)
        if (directory / HF_LAYOUT_FILE).is_file():  # copy_companion_files leaves it out (it is not HF's)
            (local / HF_LAYOUT_FILE).write_bytes((directory / HF_LAYOUT_FILE).read_bytes())
        _FETCHED_COMPANIONS[key] = local
    return _FETCHED_COMPANIONS[key]


@dataclass(frozen=True)
class CheckpointPrompt:
    """How to prompt a checkpoint exactly as it was trained (see `checkpoint_prompt`)."""

    tokenizer: Tokenizer
    style: PromptStyle
    source: str  # where the wording came from: a prompt.json, the caller, or the default

    @property
    def instruction(self) -> str:
        return self.style.instruction


def checkpoint_prompt(
    checkpoint: str | Path,
    model_config: Any,
    *,
    tokenizer_dir: str | Path | None = None,
    instruction: str | None = None,
    given: str | os.PathLike[str] | None = None,
) -> CheckpointPrompt:
    """The tokenizer and prompt wording of a resolved model checkpoint (`resolve_checkpoint`'s result).

    The tokenizer is the one beside the checkpoint, or in its run's ``model/`` for a trainer step
    (`companion_dir`), unless ``tokenizer_dir`` says otherwise. The wording (`PromptStyle`) is the one the run
    trained with (``model/prompt.json``, checked against the tokenizer's rendering); ``instruction`` replaces
    its default instruction; a converted release has none and gets the default wording. The tokenizer's ids
    are checked against the model's. ``given``: the path the user named (a run directory), looked in first,
    since a step resolved to ``checkpoint.dir=gs://...`` has no ``RUN/model/`` near it.

    Raises:
        TokenizerError: no tokenizer found, or one that does not belong to the model or the run's prompt.
    """
    root = checkpoint
    companions = companion_dir(*(p for p in (given, root) if p is not None))
    files = Path(tokenizer_dir) if tokenizer_dir else companions
    if files is None:
        raise TokenizerError(
            f"{root}: no tokenizer beside the checkpoint or in its run directory's model/ (pass the "
            "tokenizer directory explicitly)"
        )
    tok = load_tokenizer(files)
    check_model_ids(tok, model_config, str(root))
    record_file = (companions or files) / PROMPT_FILE
    style, source = PromptStyle(), "default"
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise TokenizerError(f"{record_file}: not JSON ({err})") from None
        style, source = check_prompt_record(tok, record, str(record_file)), str(record_file)
    if instruction is not None:
        style, source = PromptStyle(instruction, dict(style.languages)), "given"
    return CheckpointPrompt(tok, style, source)
