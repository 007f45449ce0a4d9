"""Fixtures of the server tests (shared helpers live in tests/helpers/; ``tiny_checkpoint`` in tests/conftest.py)."""

import pytest
from helpers.serving import wav_bytes


@pytest.fixture
def wav_2s() -> bytes:
    return wav_bytes(2.0)
