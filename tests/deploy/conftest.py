"""Shared fixtures of the deploy tests: the vendored schema folder (k8s/schemas), and values loading."""

from __future__ import annotations

import pytest

from k8s import lint


@pytest.fixture(scope="session")
def schemas():
    """k8s/schemas, the copy that ships with sawt (never a folder outside the project)."""
    try:
        return lint.schemas_dir()
    except lint.SchemasMissing as err:
        pytest.fail(str(err))
