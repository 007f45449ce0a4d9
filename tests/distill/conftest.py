"""Fixtures: the teacher stand-in served over real HTTP, and a small speech split."""

from __future__ import annotations

import pytest
from helpers.serving import serve_in_thread
from helpers.speech_split import write_split
from teacher_stub import TeacherStub

TEXTS = ["مرحبا بكم", "السلام عليكم", "شكرا جزيلا", "صباح الخير", "كيف حالك", "إلى اللقاء", "نعم", "لا"]


@pytest.fixture
def teacher():
    stub = TeacherStub()
    with serve_in_thread(stub.app, wait_ready=False, ready_path="/docs") as url:
        stub.url = url + "/v1"
        yield stub


@pytest.fixture
def split_dir(tmp_path):
    clips = [(f"s{k}", "mgb2" if k % 2 else "cv", TEXTS[k], 0.5 + 0.1 * k) for k in range(len(TEXTS))]
    return write_split(tmp_path / "data" / "test", clips)
