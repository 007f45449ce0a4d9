"""Fixtures: a tiny real checkpoint and a small ArrayRecord split in the seed schema."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from speech_split import write_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("bi") / "tiny-ckpt")


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
