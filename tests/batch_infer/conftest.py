"""Fixtures: a small ArrayRecord split in the seed schema (``tiny_checkpoint`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
from helpers.speech_split import write_split


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
