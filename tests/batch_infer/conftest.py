"""Fixtures: a tiny real checkpoint and a small ArrayRecord split in the seed schema."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("bi") / "tiny-ckpt")


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


@pytest.fixture
def split_dir(tmp_path):
    clips = [
        (
            f"id{k}",
            "mgb2" if k % 2 else "cv",
            ["مرحبا بكم", "السلام عليكم", "شكرا جزيلا"][k % 3],
            1.0 + 0.3 * k,
        )
        for k in range(6)
    ]
    return write_split(tmp_path / "data" / "test", clips)
