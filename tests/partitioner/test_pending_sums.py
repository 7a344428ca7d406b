"""Pending sums (partial values) pass only through ops whose OpDef.linear says so, and the
result still matches the unsharded program (tests/test_registry_coverage.py checks each
claim against the numpy references)."""

from __future__ import annotations

import numpy as np
import pytest

from spmd import lax
from tests.partitioner.helpers import check_sharded, rand


@pytest.mark.parametrize("padding", [((-2, 1, 0), (0, 0, 0)), ((1, -1, 0), (0, -1, 0))])
def test_pad_of_a_pending_sum_counts_its_value_once(padding) -> None:
    """A pad that shrinks the value kept a pending sum: each device padded its term, so the
    sum held the padding value once per device (pad is not linear in x)."""

    def f(a, w):
        return lax.pad(a @ w, np.float32(1.5), padding)

    check_sharded(f, [rand((4, 8)), rand((8, 3), seed=1)], "8", [(None, "data"), ("data",)])


def test_contraction_then_add_and_transpose_keep_the_sum_pending() -> None:
    """add and transpose are linear jointly: the all-reduce runs once, after both."""

    def f(a, w, b, v):
        return lax.transpose(lax.add(a @ w, b @ v), (1, 0))

    check_sharded(
        f,
        [rand((4, 8)), rand((8, 3), seed=1), rand((4, 8), seed=2), rand((8, 3), seed=3)],
        "2x4",
        [(None, "model"), ("model",), (None, "model"), ("model",)],
    )
