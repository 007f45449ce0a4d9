"""Shared fixtures of the deploy tests: the schema folder beside the checkout, and values loading."""

from __future__ import annotations

import pytest

from tools import k8s_lint


@pytest.fixture(scope="session")
def schemas():
    """../shared/schemas relative to the repo root (CI places it beside the clone); a clear failure if absent."""
    try:
        return k8s_lint.schemas_dir()
    except k8s_lint.SchemasMissing as err:
        pytest.fail(str(err))
