"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import spmd


@pytest.fixture
def x64_on() -> Iterator[None]:
    """64-bit dtypes for one test (float64 oracles, finite differences), restored after."""
    with spmd.enable_x64(True):
        yield
