"""The gradient of a loss over a shard_map's output: the cotangent is built per device (its
block, never the global array), each collective of the body runs once forward and once
backward, and the gradient equals the unsharded numpy one."""

from __future__ import annotations

import numpy as np

import spmd
from spmd import P

N = 8  # devices on 'data'
ROWS, COLS = 64, 32  # global [64, 32]; each device holds [8, 32]
BF16 = spmd.dtypes.to_numpy("bfloat16")
PAIRS = [(i, (i + 1) % N) for i in range(N)]


def body(x):
    # each block times its ring neighbour's block (from the device before it)
    return x * spmd.lax.ppermute(x, "data", PAIRS)


def loss(mesh):
    mapped = spmd.shard_map(body, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    return lambda x: mapped(x).astype("float32").sum()


def values(graph):
    for op in graph.ops:
        yield from op.types
        for key in ("body", "body_graph"):
            if hasattr(op.attrs.get(key), "ops"):
                yield from values(op.attrs[key])


def test_cotangent_is_built_per_block_and_the_gradient_is_numpys():
    mesh = spmd.make_mesh((N,), ("data",))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, COLS)).astype(BF16)
    step = spmd.jit(spmd.grad(loss(mesh)))
    compiled = step.lower(spmd.device_put(x, spmd.NamedSharding(mesh, P("data")))).compile()
    program = compiled.executable.partitioned.program
    # the per-device program never holds more than one [8, 32] block (was: the [64, 32]
    # float32 cotangent of .sum() built on every device, cast to bf16, then sliced)
    assert max(t.size for t in values(program)) == ROWS * COLS // N
    # d/dx_d sum(x_d * x_{d-1}) = x_{d-1} + x_{d+1} (blocks, cyclic)
    # (in bfloat16: each sum of two bf16 values rounded once, as numpy does it in float32)
    blocks = x.astype(np.float32).reshape(N, ROWS // N, COLS)
    want = (np.roll(blocks, 1, axis=0) + np.roll(blocks, -1, axis=0)).reshape(ROWS, COLS)
    got = np.asarray(step(x))
    assert got.dtype == BF16
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(BF16).astype(np.float32))


def test_each_ppermute_is_reported_once_forward_and_once_backward():
    # grad: the primal shard_map is dead (only its VJP's recomputation of the forward runs),
    # so one forward ppermute of an [8, 32] f32 block (1024 B) and its transpose, one each
    mesh = spmd.make_mesh((N,), ("data",))
    x = np.ones((ROWS, COLS), np.float32)
    records = spmd.jit(spmd.grad(loss(mesh))).lower(x).compile().collectives()
    block = ROWS // N * COLS * 4
    assert sorted((r.kind, r.bytes) for r in records) == [("collective_permute", block)] * 2
