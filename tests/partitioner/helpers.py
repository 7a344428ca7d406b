"""Shared helpers of the partitioner tests: the four 8-device meshes, seeded inputs, and
`check_sharded`, which runs a function sharded and unsharded and compares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import spmd
from spmd import NamedSharding, P
from tests.core.oracle import TOLERANCE

MESH_SHAPES: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "8": ((8,), ("data",)),
    "2x4": ((2, 4), ("data", "model")),
    "4x2": ((4, 2), ("data", "model")),
    "2x2x2": ((2, 2, 2), ("data", "model", "pipe")),
}
_MESHES: dict[str, spmd.Mesh] = {}


def mesh(name: str) -> spmd.Mesh:
    if name not in _MESHES:
        shape, names = MESH_SHAPES[name]
        _MESHES[name] = spmd.make_mesh(shape, names)
    return _MESHES[name]


def rand(
    shape: Sequence[int],
    dtype: str = "float32",
    seed: int = 0,
    low: float = -2.0,
    high: float = 2.0,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("int"):
        return rng.integers(int(low) - 3, int(high) + 3, size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def assert_matches(actual: Any, expected: Any, scale: float = 1.0) -> None:
    """Exact for ints and bool; the dtype's tolerance (x scale) for floats."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    name = str(actual.dtype)
    if name not in TOLERANCE:
        np.testing.assert_array_equal(actual, expected)
        return
    rtol, atol = TOLERANCE[name]
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=rtol * scale, atol=atol * scale
    )


def check_shards(out: spmd.Array, full: np.ndarray) -> None:
    """Every addressable shard holds exactly full[shard.index]."""
    for shard in out.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])


def check_sharded(
    fn: Callable[..., Any],
    args: Sequence[np.ndarray],
    mesh_name: str,
    in_specs: Sequence[Any],
    out_spec: Any = None,
    scale: float = 1.0,
    commit: bool = True,
) -> list[Any]:
    """fn sharded (inputs placed by in_specs; outputs as out_spec when given) against the
    same fn jitted with no shardings. Returns the sharded outputs."""
    m = mesh(mesh_name)
    want = spmd.jit(fn)(*args)
    shardings = tuple(NamedSharding(m, P(*s)) if s is not None else None for s in in_specs)
    out_shardings = NamedSharding(m, P(*out_spec)) if out_spec is not None else None
    if commit:
        placed = [spmd.device_put(a, s) if s is not None else a for a, s in zip(args, shardings)]
        f = spmd.jit(fn, out_shardings=out_shardings)
        got = f(*placed)
    else:
        f = spmd.jit(fn, in_shardings=shardings, out_shardings=out_shardings)
        got = f(*args)
    got_leaves = spmd.tree_leaves(got)
    want_leaves = spmd.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves):
        full = np.asarray(g)
        assert_matches(full, np.asarray(w), scale)
        if out_spec is not None:
            assert g.sharding == out_shardings, f"{g.sharding} != {out_shardings}"
        if isinstance(g.sharding, NamedSharding):
            check_shards(g, full)
    return got_leaves
