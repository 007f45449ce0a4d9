"""Shared fixtures of the deploy tests: the schema folder beside the checkout, and values loading."""

from __future__ import annotations

import pytest

from k8s import lint


@pytest.fixture(scope="session")
def schemas():
    """../shared/schemas relative to the repo root (CI places it beside the clone); a clear failure if absent."""
    try:
        return lint.schemas_dir()
    except lint.SchemasMissing as err:
        pytest.fail(str(err))
