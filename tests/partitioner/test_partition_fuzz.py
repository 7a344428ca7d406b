"""Hypothesis fuzzing of the partitioner: random small programs (elementwise, broadcast,
reduce, dot, transpose, reshape, softmax, sharding constraints) x random valid partition
specs x the four 8-device meshes x random (often uneven) shapes, against the unsharded run.

The `ci` profile of tests/conftest.py runs the fast variant (200 examples); the slow variant
runs a few thousand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, nn
from tests.partitioner.helpers import MESH_SHAPES, assert_matches, check_shards, mesh

OPS = (
    "tanh",
    "sin",
    "mul_other",
    "add_other",
    "center_rows",
    "scale_cols",
    "transpose",
    "reshape",
    "self_dot",
    "softmax",
    "constrain",
    "where",
)
FINAL = ("none", "sum0", "sum1", "max0", "max1", "mean_all")


@st.composite
def specs(draw: Any, mesh_name: str, ndim: int) -> P:
    """A valid PartitionSpec: each mesh axis goes to one dim (or none), in a random order."""
    axes = list(MESH_SHAPES[mesh_name][1])
    order = draw(st.permutations(axes))
    per_dim: list[list[str]] = [[] for _ in range(ndim)]
    for axis in order:
        where = draw(st.integers(-1, ndim - 1))
        if where >= 0:
            per_dim[where].append(axis)
    return P(*[None if not d else d[0] if len(d) == 1 else tuple(d) for d in per_dim])


@st.composite
def programs(draw: Any, min_size: int) -> dict[str, Any]:
    mesh_name = draw(st.sampled_from(tuple(MESH_SHAPES)))
    rows = draw(st.integers(min_size, 10))
    cols = draw(st.integers(min_size, 10))
    ops = draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=4))
    constraint_specs = [draw(specs(mesh_name, 2)) for _ in ops]
    return {
        "mesh": mesh_name,
        "shape": (rows, cols),
        "ops": ops,
        "x_spec": draw(specs(mesh_name, 2)),
        "y_spec": draw(specs(mesh_name, 2)),
        "constraints": constraint_specs,
        "final": draw(st.sampled_from(FINAL)),
        "out_spec": draw(st.one_of(st.none(), specs(mesh_name, 2))),
    }


def build(program: dict[str, Any]) -> Any:
    """The program as a function of (x, y); y has x's shape and is used by *_other ops."""
    m = mesh(program["mesh"])

    def fn(x: Any, y: Any) -> Any:
        v = x
        for op, spec in zip(program["ops"], program["constraints"]):
            same_shape = v.shape == y.shape
            if op == "tanh":
                v = snp.tanh(v)
            elif op == "sin":
                v = snp.sin(v * 1.5)
            elif op == "mul_other" and same_shape:
                v = v * y
            elif op == "add_other" and same_shape:
                v = v + y
            elif op == "center_rows":
                v = v - snp.mean(v, axis=0, keepdims=True)
            elif op == "scale_cols":
                v = v / (snp.max(snp.abs(v), axis=1, keepdims=True) + 1.0)
            elif op == "transpose":
                v = v.T
            elif op == "reshape":
                v = snp.reshape(v, (v.shape[1], v.shape[0]))
            elif op == "self_dot":
                v = (v @ v.T) / v.shape[1]
            elif op == "softmax":
                v = nn.softmax(v, axis=len(program["ops"]) % 2)
            elif op == "constrain":
                v = spmd.with_sharding_constraint(v, NamedSharding(m, spec))
            elif op == "where":
                v = snp.where(v > 0, v, v * 0.5)
        final = program["final"]
        if final == "sum0":
            return snp.sum(v, axis=0)
        if final == "sum1":
            return snp.sum(v, axis=1)
        if final == "max0":
            return snp.max(v, axis=0)
        if final == "max1":
            return snp.max(v, axis=1)
        if final == "mean_all":
            return snp.mean(v)
        return v

    return fn


def run(program: dict[str, Any]) -> None:
    m = mesh(program["mesh"])
    rng = np.random.default_rng(len(program["ops"]))
    x = rng.uniform(-2, 2, program["shape"]).astype(np.float32)
    y = rng.uniform(-2, 2, program["shape"]).astype(np.float32)
    fn = build(program)
    want = np.asarray(spmd.jit(fn)(x, y))
    out_spec = program["out_spec"]
    out_sharding = None
    if out_spec is not None and program["final"] == "none" and want.ndim == 2:
        out_sharding = NamedSharding(m, out_spec)
    xs = spmd.device_put(x, NamedSharding(m, program["x_spec"]))
    ys = spmd.device_put(y, NamedSharding(m, program["y_spec"]))
    got = spmd.jit(fn, out_shardings=out_sharding)(xs, ys)
    full = np.asarray(got)
    assert_matches(full, want, scale=20.0)
    if out_sharding is not None:
        assert got.sharding == out_sharding
    if isinstance(got.sharding, NamedSharding):
        check_shards(got, full)


@given(programs(min_size=1))
def test_fuzz_sharded_matches_unsharded(program: dict[str, Any]) -> None:
    run(program)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~50 s alone, 130-260 s seen at load 15-20 on 2 cores
@settings(max_examples=1500, derandomize=True, deadline=None)
@given(programs(min_size=2))
def test_fuzz_sharded_matches_unsharded_long(program: dict[str, Any]) -> None:
    run(program)
