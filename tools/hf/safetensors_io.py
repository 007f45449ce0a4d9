"""Streaming safetensors I/O: read one tensor at a time, write shards without holding them in memory.

The safetensors format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header), then the
raw little-endian bytes. We parse the header ourselves and read each tensor with ``readinto`` straight into
its destination buffer: a memory map would keep every touched page of a multi-GB shard resident (and
counted in RSS) for as long as the map is open, which defeats the point of streaming. numpy has no
bfloat16, so bf16 comes from ``ml_dtypes`` and round-trips bit for bit.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# HF's `save_pretrained` default shard size (5 GB, decimal).
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000
# Copies between files move at most this much per system call (bounded memory on the read/write fallback).
COPY_BLOCK_BYTES = 64 << 20

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file or index is malformed; the message names the file and tensor."""


def dtype_from_name(name: str, where: str = "") -> np.dtype:
    """numpy dtype of a safetensors dtype name (``"BF16"`` -> ml_dtypes.bfloat16)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise SafetensorsError(f"{where}: unsupported safetensors dtype {name!r}") from None


def dtype_name(dtype: np.dtype) -> str:
    """safetensors dtype name of a numpy dtype."""
    try:
        return _DTYPE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise SafetensorsError(f"dtype {dtype} cannot be stored in safetensors") from None


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives on disk."""

    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parses one safetensors file's header: ``({name: TensorInfo}, __metadata__)``."""
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > 100_000_000:
            raise SafetensorsError(f"{path}: header length {header_len} is not plausible")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SafetensorsError(f"{path}: header is not valid JSON ({err})") from None
    size = path.stat().st_size
    base = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in header.items():
        where = f"{path}: tensor {name}"
        dtype = dtype_from_name(entry.get("dtype", "?"), where)
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = entry["data_offsets"]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != nbytes or base + end > size:
            raise SafetensorsError(f"{where}: data offsets {begin}..{end} do not match shape {list(shape)}")
        tensors[name] = TensorInfo(name, path, dtype, shape, base + begin, nbytes)
    return tensors, metadata


def open_checkpoint(directory: str | Path) -> dict[str, TensorInfo]:
    """All tensors of an HF checkpoint directory: sharded (with the index) or a single `model.safetensors`.

    Raises:
        FileNotFoundError: neither the index nor a single file is there.
        SafetensorsError: the index names a tensor its shard does not hold.
    """
    directory = Path(directory)
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise SafetensorsError(f"{index_path}: not a safetensors index ({err})") from None
        tensors: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"{index_path} names shard {shard}, which is missing")
            found, _ = read_header(shard_path)
            tensors.update(found)
        for name, shard in weight_map.items():
            if name not in tensors or tensors[name].file.name != shard:
                raise SafetensorsError(f"{index_path}: tensor {name} is not in shard {shard}")
        return tensors
    single = directory / SINGLE_FILE
    if single.is_file():
        return read_header(single)[0]
    shards = sorted(directory.glob("*.safetensors"))
    if len(shards) == 1:
        return read_header(shards[0])[0]
    raise FileNotFoundError(f"{directory}: no {INDEX_FILE} and no {SINGLE_FILE}")


def read_into(info: TensorInfo, out: np.ndarray) -> np.ndarray:
    """Reads one tensor's bytes straight into ``out`` (C-contiguous, its dtype and size)."""
    if out.nbytes != info.nbytes or not out.flags.c_contiguous:
        raise SafetensorsError(f"{info.file}: tensor {info.name}: destination buffer does not fit")
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(info.file, "rb", buffering=0) as f:
        f.seek(info.offset)
        done = 0
        while done < info.nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise SafetensorsError(f"{info.file}: tensor {info.name}: file ends early")
            done += n
    return out


def read_rows(info: TensorInfo, start: int, stop: int) -> np.ndarray:
    """Reads rows ``start:stop`` of a tensor's first axis (contiguous on disk) into a new array."""
    row_shape = info.shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * info.dtype.itemsize
    part = TensorInfo(
        info.name,
        info.file,
        info.dtype,
        (stop - start, *row_shape),
        info.offset + start * row_bytes,
        (stop - start) * row_bytes,
    )
    return read_tensor(part)


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Reads one tensor into a new array of its own dtype and shape."""
    return read_into(info, np.empty(info.shape, info.dtype))


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to be written: name, dtype and shape are known before its data is."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_shards(tensors: Iterable[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Cuts the tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = []
    size = 0
    for t in tensors:
        if not shards or (shards[-1] and size + t.nbytes > max_shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class ShardedWriter:
    """Writes planned tensors into HF-style shards plus `model.safetensors.index.json`, in any order.

    Every shape is known up front, so each shard's header and each tensor's byte range are fixed before any
    data arrives: the files are created at full size with their headers, and each tensor is written at its
    own offset when it comes (`write`), or copied byte for byte from another safetensors file (`copy`).
    Only one tensor is ever in memory, whatever order the caller produces them in. Files are written under
    temporary names and renamed on `close`, once every planned tensor was written, so an interrupted export
    leaves no half-written shard that looks complete.

    Args:
        directory: where the shards go (created).
        plan: the tensors, cut into shards of at most ``max_shard_bytes`` in this order; or
        shards: an explicit layout, ``[(file name, [tensors in file order]), ...]`` (to mirror another
            checkpoint's shards exactly).
    """

    def __init__(
        self,
        directory: str | Path,
        plan: list[PlannedTensor] | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        metadata: Mapping[str, str] | None = None,
        *,
        shards: list[tuple[str, list[PlannedTensor]]] | None = None,
    ):
        if (plan is None) == (shards is None):
            raise ValueError("give either plan or shards")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if shards is None:
            cut = plan_shards(plan or [], max_shard_bytes)
            n = len(cut)
            names = (
                [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
            )
            shards = list(zip(names, cut, strict=True))
        self._shards = shards
        self._metadata = {"format": "pt", **(metadata or {})}
        self._where: dict[str, tuple[int, int, PlannedTensor]] = {}  # name -> (shard, file offset, plan)
        self._fds: list[int] = []
        for index, (_, tensors) in enumerate(shards):
            self._fds.append(self._create(index, tensors))
        self._pending = set(self._where)
        self._rows_done: dict[str, int] = {}
        self.total_bytes = sum(t.nbytes for _, ts in shards for t in ts)

    def _create(self, index: int, tensors: list[PlannedTensor]) -> int:
        header: dict[str, object] = {"__metadata__": self._metadata}
        offset = 0
        for t in tensors:
            if t.name in self._where:
                raise SafetensorsError(f"tensor {t.name} is planned twice")
            header[t.name] = {
                "dtype": dtype_name(t.dtype),
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
        base = 8 + len(raw)
        for t in tensors:
            begin, _ = header[t.name]["data_offsets"]  # type: ignore[index]
            self._where[t.name] = (index, base + begin, t)
        fd = os.open(self._tmp(index), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(fd, struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(fd, base + offset)
        return fd

    def _tmp(self, index: int) -> Path:
        return self.directory / (self._shards[index][0] + ".tmp")

    def _slot(self, name: str) -> tuple[int, int, PlannedTensor]:
        if name not in self._where:
            raise SafetensorsError(f"tensor {name} is not in the export plan")
        if name not in self._pending:
            raise SafetensorsError(f"tensor {name} was written twice")
        return self._where[name]

    def write(self, name: str, array: np.ndarray, first_row: int | None = None) -> None:
        """Writes one planned tensor (any order); its dtype and shape must match the plan.

        With ``first_row``, ``array`` is the rows ``first_row:first_row + len(array)`` of the tensor (its first
        axis, contiguous on disk), so a big tensor can be written in blocks; it counts as written once all
        its rows were.
        """
        index, offset, planned = self._slot(name)
        rows = planned.shape[1:] if first_row is not None else planned.shape
        got = tuple(array.shape[1:]) if first_row is not None else tuple(array.shape)
        if got != tuple(rows) or array.dtype != planned.dtype:
            raise SafetensorsError(
                f"tensor {name}: expected {list(planned.shape)} {planned.dtype}, got {list(array.shape)} {array.dtype}"
            )
        view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        if first_row is not None:
            if first_row < 0 or first_row + len(array) > planned.shape[0]:
                raise SafetensorsError(
                    f"tensor {name}: rows {first_row}..{first_row + len(array)} out of range"
                )
            offset += first_row * (planned.nbytes // max(1, planned.shape[0]))
        done = 0
        while done < len(view):
            done += os.pwrite(self._fds[index], view[done:], offset + done)
        if first_row is None:
            self._pending.discard(name)
            return
        self._rows_done[name] = self._rows_done.get(name, 0) + len(array)
        if self._rows_done[name] == planned.shape[0]:
            self._pending.discard(name)

    def copy(self, name: str, source: TensorInfo) -> None:
        """Copies one planned tensor's bytes from another safetensors file, unchanged (no decoding)."""
        index, offset, planned = self._slot(name)
        if source.shape != planned.shape or source.dtype != planned.dtype:
            raise SafetensorsError(
                f"tensor {name}: {source.file} holds {list(source.shape)} {source.dtype}, the plan says "
                f"{list(planned.shape)} {planned.dtype}"
            )
        with open(source.file, "rb", buffering=0) as f:
            src, done = f.fileno(), 0
            while done < source.nbytes:
                n = min(COPY_BLOCK_BYTES, source.nbytes - done)
                try:  # in-kernel copy where the file system allows it
                    moved = os.copy_file_range(src, self._fds[index], n, source.offset + done, offset + done)
                except OSError:
                    moved = os.pwrite(self._fds[index], os.pread(src, n, source.offset + done), offset + done)
                if moved <= 0:
                    raise SafetensorsError(f"{source.file}: tensor {source.name}: file ends early")
                done += moved
        self._pending.discard(name)

    def close(self, index_metadata: Mapping[str, object] | None = None) -> list[Path]:
        """Checks every tensor was written, renames the shards into place and writes the index when sharded.

        ``index_metadata``: more entries for the index's ``metadata`` (an export keeps its base's, e.g.
        ``total_parameters``); ``total_size`` is always this checkpoint's.
        """
        if self._pending:
            missing = sorted(self._pending)
            raise SafetensorsError(f"export incomplete: tensor {missing[0]} was never written")
        paths = []
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        for index, (name, _) in enumerate(self._shards):
            os.replace(self._tmp(index), self.directory / name)
            paths.append(self.directory / name)
        if len(self._shards) > 1 or self._shards[0][0] != SINGLE_FILE:
            from core.fileio import atomic_write_text

            weight_map = {t.name: name for name, tensors in self._shards for t in tensors}
            metadata = {**(index_metadata or {}), "total_size": self.total_bytes}
            # Formatted as transformers' save_pretrained writes it (sorted keys, indent 2).
            index = {"metadata": metadata, "weight_map": weight_map}
            atomic_write_text(self.directory / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
        return paths

    def abort(self) -> None:
        """Closes and removes the temporary files (after a failure)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for index in range(len(self._shards)):
            self._tmp(index).unlink(missing_ok=True)


def write_safetensors(
    directory: str | Path,
    tensors: Mapping[str, np.ndarray],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[Path]:
    """Writes an in-memory dict of tensors as HF shards (for tests and small synthetic checkpoints)."""
    plan = [PlannedTensor(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    writer = ShardedWriter(directory, plan, max_shard_bytes)
    for k, v in tensors.items():
        writer.write(k, v)
    return writer.close()
