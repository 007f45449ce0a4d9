"""Writing TFRecord shards in tests, with the byte offset of every record (for corruption tests)."""

from __future__ import annotations

from pathlib import Path


def write_tfrecord(path: Path, payloads: list[bytes]) -> list[int]:
    """Writes ``payloads`` as a TFRecord file with the real writer; returns each record's byte offset."""
    from trainer.data.tfrecord import TFRecordWriter

    offsets, pos = [], 0
    with TFRecordWriter(path) as w:
        for p in payloads:
            w.write(p)
            offsets.append(pos)
            pos += 16 + len(p)  # length (8) + its CRC (4) + payload + its CRC (4)
    return offsets
