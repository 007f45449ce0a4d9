"""The ArrayRecord shards of a split: where they are, which records each process reads, and reading them.

One copy for everyone who reads converted data: the trainer's loader (`split_shards`), `sawt batch-infer`
and the distillation tools (`find_shards`, `shard_records`, `read_records`, `iter_split`). Records are
numbered in shard-name order, the order of the split's ``index.npz``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARD_GLOB = "*.array_record"


class DataError(ValueError):
    """The data directory or split cannot be used; the message names the path."""


@dataclass(frozen=True)
class RecordRef:
    number: int  # global record number over the split
    shard: Path
    index: int  # record index inside the shard


def shards_in(directory: Path) -> list[Path]:
    """The ArrayRecord shards directly in ``directory``, sorted by file name (the split's record order)."""
    return sorted(directory.glob(SHARD_GLOB), key=lambda p: p.name)


def split_shards(root: str | Path, split: str) -> list[Path]:
    """The shards of ``ROOT/<split>`` (what `sawt data convert` writes); DataError when there are none."""
    directory = Path(root) / split
    if not directory.is_dir():
        raise DataError(f"{directory}: no such split directory (run `sawt data convert` first)")
    shards = shards_in(directory)
    if not shards:
        raise DataError(f"{directory}: no {SHARD_GLOB} shards")
    return shards


def find_shards(data: str | Path, split: str | None) -> list[Path]:
    """The split's shards for a user-given path: ``data`` is a split directory, or a root holding ``<split>/``.

    Without a split, a root that has no shards of its own but a ``test/`` split means that split.
    """
    root = Path(data)
    directory = root / split if split else root
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such data directory")
    shards = shards_in(directory)
    if not shards and split is None and (root / "test").is_dir():
        shards = shards_in(root / "test")
    if not shards:
        raise FileNotFoundError(f"{directory}: no {SHARD_GLOB} shards (pass a split directory or --split)")
    return shards


def shard_records(shards: list[Path], process_index: int, num_processes: int) -> list[RecordRef]:
    """This process's records (``number % num_processes == process_index``)."""
    from array_record.python.array_record_module import ArrayRecordReader

    refs: list[RecordRef] = []
    number = 0
    for shard in shards:
        reader = ArrayRecordReader(str(shard))
        try:
            count = reader.num_records()
        finally:
            reader.close()
        for i in range(count):
            if number % num_processes == process_index:
                refs.append(RecordRef(number, shard, i))
            number += 1
    return refs


def read_records(refs: list[RecordRef]) -> Iterator[tuple[RecordRef, bytes]]:
    """The serialized records at ``refs``, in order, each shard opened once."""
    from array_record.python.array_record_module import ArrayRecordReader

    readers: dict[Path, Any] = {}
    try:
        for ref in refs:
            if ref.shard not in readers:
                readers[ref.shard] = ArrayRecordReader(str(ref.shard))
            yield ref, readers[ref.shard].read([ref.index])[0]
    finally:
        for r in readers.values():
            r.close()


def iter_split(data: str | Path, split: str | None = None) -> Iterator[tuple[RecordRef, bytes]]:
    """Every record of a split as (where, serialized bytes), in shard-name order."""
    yield from read_records(shard_records(find_shards(data, split), 0, 1))
