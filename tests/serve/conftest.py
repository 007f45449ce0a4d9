"""Fixtures of the server tests (helpers live in serve_helpers.py)."""

import pytest
from serve_helpers import wav_bytes


@pytest.fixture
def wav_2s() -> bytes:
    return wav_bytes(2.0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A real model checkpoint (random tiny Thinker + demo tokenizer), shared by the end-to-end tests."""
    from tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny-ckpt")
