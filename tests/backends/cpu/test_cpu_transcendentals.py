"""float32 exp and tanh of the CPU backend over the whole float32 range (random bit patterns,
a dense sweep, overflow/underflow/subnormal edges, NaN/inf/-0) against numpy in float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.cpu import compile_program

EDGES = [
    np.nan,
    np.inf,
    -np.inf,
    0.0,
    -0.0,
    1e-30,
    -1e-30,
    1e-45,
    -1e-45,
    0.1,
    -0.1,
    88.72283172607422,
    88.72283935546875,
    88.7228,
    89.0,
    -86.0,
    -86.00001,
    -87.33,
    -103.97207,
    -103.97208,
    -103.9728,
    -104.0,
    9.0,
    9.01,
    -9.0,
    10.0,
    20.0,
    -20.0,
]


def inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32).view(np.float32)
    dense = np.linspace(-105, 90, 1 << 18, dtype=np.float32)
    return np.concatenate([bits, dense, np.asarray(EDGES, np.float32)])


def ulp_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| in units of want's float32 spacing (subnormal spacing at least)."""
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    spacing = np.maximum(np.abs(np.spacing(want)), np.finfo(np.float32).smallest_subnormal)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64)) / spacing
    return float(np.max(np.where(same, 0.0, np.nan_to_num(diff, nan=np.inf))))


@pytest.mark.parametrize(
    "name, ours, reference, max_ulp",
    [("exp", jnp.exp, np.exp, 1.0), ("tanh", jnp.tanh, np.tanh, 2.0)],
)
def test_float32_transcendental_within_ulps_everywhere(
    name: str, ours: Callable[..., object], reference: Callable[..., np.ndarray], max_ulp: float
) -> None:
    x = inputs()
    exe = compile_program(spmd.jit(ours).lower(x).graph)
    got = exe([x])[0]
    with np.errstate(over="ignore", invalid="ignore"):
        want = reference(x.astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want)), name
    assert np.array_equal(np.isinf(got) & (got > 0), np.isinf(want) & (want > 0)), name
    zeros = (got == 0) & (want == 0)
    assert np.array_equal(np.signbit(got[zeros]), np.signbit(want[zeros])), name
    assert ulp_error(got, want) <= max_ulp, name
