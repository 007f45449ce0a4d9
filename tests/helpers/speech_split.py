"""A small ArrayRecord split in the seed schema, for batch-infer and distillation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_split(directory: Path, clips: list[tuple[str, str, str, float]], shards: int = 2) -> Path:
    """Writes ``clips`` (sample_id, dataset_name, text, seconds) as ArrayRecord shards in the seed schema."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from trainer.data.example import encode_speech

    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        writer = ArrayRecordWriter(str(directory / f"part-{s:05d}.array_record"), "group_size:1")
        for k, (sid, source, text, seconds) in enumerate(clips):
            if k % shards != s:
                continue
            t = np.arange(int(seconds * 16000)) / 16000
            wave = (0.2 * np.sin(2 * np.pi * (200 + 37 * k) * t)).astype(np.float32)
            writer.write(encode_speech(wave, text, source, sid))
        writer.close()
    return directory
