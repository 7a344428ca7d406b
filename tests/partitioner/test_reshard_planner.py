"""The resharding planner on hand-made layouts: each from -> to pair of DESIGN.md's table
emits the listed collective with the listed bytes, and the emitted per-device program,
run in lockstep on split inputs, reassembles to the original array."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from partitioner.builder import ProgramBuilder
from partitioner.layout import assemble, device_coords, group_index, split
from partitioner.reshard import ReplicationWarning, estimate_bytes, reshard
from partitioner.spec import MeshShape, ShardSpec, local_type
from spmd.ir.types import TensorType
from spmd.spmd_interpreter import evaluate_spmd

MESH_8 = MeshShape(("data",), (8,))
MESH_2X4 = MeshShape(("data", "model"), (2, 4))
MESH_2X2X2 = MeshShape(("data", "model", "pipe"), (2, 2, 2))


def addends(x: np.ndarray, spec: ShardSpec, mesh: MeshShape) -> list[np.ndarray]:
    """Per-device shards of x; a partial value is split into addends (sum) or shifted
    copies (max) whose reduction over the partial axes is x."""
    shards = split(x, spec, mesh)
    if not spec.partial:
        return shards
    n = mesh.size(spec.partial)
    out = []
    for coords, shard in zip(device_coords(mesh), shards):
        g = group_index(coords, spec.partial, mesh)
        if spec.partial_kind == "max":
            out.append(shard - np.float32(g))
        else:
            out.append(shard * np.float32(g + 1) / np.float32(n * (n + 1) / 2))
    return out


def run_reshard(
    x: np.ndarray,
    src: ShardSpec,
    dst: tuple,
    mesh: MeshShape,
) -> tuple[list[Any], ShardSpec, np.ndarray]:
    """Plan src -> dst, run the program on every device, reassemble the result."""
    gtype = TensorType(x.shape, str(x.dtype))
    b = ProgramBuilder(mesh)
    param = b.param(local_type(gtype, src, mesh))
    out, spec = reshard(b, param, gtype, src, dst, "here.py:1", "test")
    program = b.finish([out])
    outs = evaluate_spmd(program, [[s] for s in addends(x, src, mesh)], mesh.names, mesh.sizes)
    for d, coords in enumerate(device_coords(mesh)):
        assert outs[d][0].shape == local_type(gtype, spec, mesh).shape, (d, coords)
    return b.records, spec, assemble([o[0] for o in outs], x.shape, spec, mesh)


def data(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# (name, mesh, shape, src, dst, [(kind, axes)], table bytes per device moved)
# V = bytes of the value on one device after the collective, n = the axis size.
TABLE = [
    # dim sharded on a -> replicated: all-gather(a), V(n-1)/n; V = 8*4*4 = 128, n = 8.
    (
        "all-gather",
        MESH_8,
        (8, 4),
        ShardSpec((("data",), ())),
        ((), ()),
        [("all_gather", ("data",))],
        128 * 7 / 8,
    ),
    # replicated -> dim sharded: local slice, nothing moves.
    ("local-slice", MESH_2X4, (8, 4), ShardSpec.replicated(2), ((), ("model",)), [], 0.0),
    # partial over a -> replicated: all-reduce(a), 2V(n-1)/n; V = 128, n = 4.
    (
        "all-reduce",
        MESH_2X4,
        (8, 4),
        ShardSpec(((), ()), ("model",)),
        ((), ()),
        [("all_reduce", ("model",))],
        2 * 128 * 3 / 4,
    ),
    # partial over a -> dim sharded on a: reduce-scatter(a), nV(n-1)/n; V = 128/4 = 32.
    (
        "reduce-scatter",
        MESH_2X4,
        (8, 4),
        ShardSpec(((), ()), ("model",)),
        (("model",), ()),
        [("reduce_scatter", ("model",))],
        4 * 32 * 3 / 4,
    ),
    # dim i on a -> dim j on a: all-to-all(a), V(n-1)/n; V = 128/8 = 16, n = 8.
    (
        "all-to-all",
        MESH_8,
        (8, 8),
        ShardSpec((("data",), ())),
        ((), ("data",)),
        [("all_to_all", ("data",))],
        32 * 7 / 8,
    ),
]


@pytest.mark.parametrize(
    "name,mesh,shape,src,dst,kinds,moved", [pytest.param(*row, id=row[0]) for row in TABLE]
)
def test_table_collective_kind_and_result(
    name: str, mesh: MeshShape, shape: tuple, src: ShardSpec, dst: tuple, kinds: list, moved: float
) -> None:
    x = data(*shape)
    recs, spec, out = run_reshard(x, src, dst, mesh)
    assert [(r.kind, r.axes) for r in recs] == kinds
    assert spec == ShardSpec(dst)
    np.testing.assert_allclose(out, x, rtol=1e-6, atol=1e-6)
    gtype = TensorType(shape, "float32")
    local = local_type(gtype, src, mesh)
    for r in recs:
        # The record's bytes are the operand a device feeds in: its local buffer.
        assert r.bytes == local.nbytes and r.shape == local.shape and r.reason


@pytest.mark.parametrize(
    "name,mesh,shape,src,dst,kinds,moved", [pytest.param(*row, id=row[0]) for row in TABLE]
)
def test_table_estimate_bytes(
    name: str, mesh: MeshShape, shape: tuple, src: ShardSpec, dst: tuple, kinds: list, moved: float
) -> None:
    assert estimate_bytes(TensorType(shape, "float32"), src, dst, mesh) == pytest.approx(moved)


ROUND_TRIPS = [
    # (mesh, shape, src, dst): uneven shapes and several axes on one dim.
    (MESH_2X4, (10, 6), ShardSpec((("model",), ())), ((), ())),
    (MESH_2X4, (10, 6), ShardSpec(((), ())), (("model",), ("data",))),
    (MESH_2X4, (8, 6), ShardSpec((("data", "model"), ())), ((), ())),
    (MESH_2X4, (8, 6), ShardSpec((("data", "model"), ())), (("data",), ())),
    (MESH_2X4, (8, 6), ShardSpec((("data",), ())), (("data", "model"), ())),
    (MESH_2X4, (7, 5), ShardSpec((("data", "model"), ())), ((), ("data",))),
    (MESH_2X4, (8, 8), ShardSpec((("data",), ("model",))), (("model",), ("data",))),
    (MESH_2X4, (12, 4), ShardSpec(((), ()), ("data", "model")), (("model",), ())),
    (MESH_2X4, (12, 4), ShardSpec(((), ()), ("model",), "max"), ((), ())),
    (MESH_2X4, (10, 4), ShardSpec(((), ()), ("model",)), (("model",), ())),
    (MESH_2X4, (6, 8), ShardSpec((("data",), ()), ("model",)), (("data",), ("model",))),
    (
        MESH_2X2X2,
        (8, 4, 6),
        ShardSpec((("data",), ("model",), ("pipe",))),
        (("pipe",), (), ("data", "model")),
    ),
    (MESH_2X2X2, (5, 3, 2), ShardSpec((("data", "pipe"), (), ("model",))), ((), ("pipe",), ())),
    (MESH_8, (7,), ShardSpec((("data",),)), ((),)),
    (MESH_8, (1, 9), ShardSpec(((), ("data",))), (("data",), ())),
    (MESH_8, (0, 4), ShardSpec((("data",), ())), ((), ())),
]


@pytest.mark.parametrize(
    "mesh,shape,src,dst", ROUND_TRIPS, ids=[f"{s}:{src}->{dst}" for _, s, src, dst in ROUND_TRIPS]
)
def test_round_trip_gives_target_layout(
    mesh: MeshShape, shape: tuple, src: ShardSpec, dst: tuple
) -> None:
    x = data(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReplicationWarning)
        recs, spec, out = run_reshard(x, src, dst, mesh)
    assert spec == ShardSpec(dst)
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-6)
    assert all(r.reason and r.loc == "here.py:1" for r in recs)
    if not src.partial and all(not d for d in src.dims):
        assert recs == []  # replicated -> anything is a local slice


def test_layout_split_assemble_round_trip_uneven_multi_axis() -> None:
    x = data(7, 5, 3)
    for mesh in (MESH_8, MESH_2X4, MESH_2X2X2):
        names = mesh.names
        for dims in [(names, (), ()), ((), names[::-1], ()), ((names[0],), (), names[1:])]:
            spec = ShardSpec(dims)
            shards = split(x, spec, mesh)
            assert len(shards) == mesh.num_devices
            assert all(
                s.shape == local_type(TensorType(x.shape, "float32"), spec, mesh).shape
                for s in shards
            )
            np.testing.assert_array_equal(assemble(shards, x.shape, spec, mesh), x)
