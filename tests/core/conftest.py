"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.core.oracle import x64


@pytest.fixture
def x64_on() -> Iterator[None]:
    """64-bit dtypes for one test (float64 oracles, finite differences), restored after."""
    with x64(True):
        yield
