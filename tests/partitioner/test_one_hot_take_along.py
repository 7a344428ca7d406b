"""one_hot and take_along_axis on sharded values (issue 18, item 6): an iota is built per
device at its local shape (never folded or materialised at the global one), and
take_along_axis on batch-sharded log-probs stays batch-local. Bytes derived by hand;
numerics against numpy and the unsharded run."""

from __future__ import annotations

from typing import Any

import numpy as np

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, nn
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.passes.rules import IOTA_LIMIT, GraphView
from tests.partitioner.helpers import mesh

F32 = 4


def put(x: np.ndarray, *spec: Any) -> spmd.Array:
    return spmd.device_put(x, NamedSharding(mesh("2x4"), P(*spec)))


def logits_and_targets(v: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((8, 4, v)).astype(np.float32),
        rng.integers(-v, v, (8, 4)).astype(np.int32),
    )


def pick(lp: Any, t: Any) -> Any:
    return snp.take_along_axis(lp, t[:, :, None], axis=-1)


def test_take_along_axis_on_batch_sharded_values_moves_nothing() -> None:
    # Batch on data: every device picks from its own rows; no collective (it used to
    # all-gather the flattened [8*4*32] array: 4096 B in, 16384 B out).
    lp, t = logits_and_targets()
    f = spmd.jit(pick)
    assert f.lower(put(lp, "data"), put(t, "data")).compile().collectives() == []
    want = np.take_along_axis(lp, np.where(t < 0, t + 32, t)[:, :, None], axis=-1)
    np.testing.assert_array_equal(np.asarray(f(put(lp, "data"), put(t, "data"))), want)


def cross_entropy(logits: Any, t: Any) -> Any:
    return -snp.mean(pick(nn.log_softmax(logits), t))


def test_cross_entropy_gradient_is_batch_local() -> None:
    # Only the mean's scalar sum crosses devices: one all-reduce of 4 B over data (no
    # scatter-add over a gathered [B*S*V] array in the backward pass).
    lp, t = logits_and_targets()
    f = spmd.jit(spmd.value_and_grad(cross_entropy))
    recs = f.lower(put(lp, "data"), put(t, "data")).compile().collectives()
    assert [(r.kind, r.axes, r.bytes) for r in recs] == [("all_reduce", ("data",), F32)]
    loss, grad = f(put(lp, "data"), put(t, "data"))
    want_loss, want_grad = spmd.jit(spmd.value_and_grad(cross_entropy))(lp, t)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-5, atol=1e-7)


def test_take_along_axis_over_a_sharded_vocabulary_sums_one_hit() -> None:
    # Vocabulary on model: each device compares its 8 classes, the hit is a pending sum
    # over model resolved on the picked [4, 4, 1] f32 block per device: 64 B all-reduced.
    lp, t = logits_and_targets()
    f = spmd.jit(pick)
    args = (put(lp, "data", None, "model"), put(t, "data"))
    recs = f.lower(*args).compile().collectives()
    assert [(r.kind, r.axes, r.bytes, r.shape) for r in recs] == [
        ("all_reduce", ("model",), 4 * 4 * 1 * F32, (4, 4, 1))
    ]
    want = np.take_along_axis(lp, np.where(t < 0, t + 32, t)[:, :, None], axis=-1)
    np.testing.assert_array_equal(np.asarray(f(*args)), want)


def test_one_hot_classes_sharded_counts_from_each_shard_start() -> None:
    # Classes on model: each device's iota starts at its shard's first class (8 per device).
    t = np.random.default_rng(1).integers(-3, 32, (8, 4)).astype(np.int32)
    out_sharding = NamedSharding(mesh("2x4"), P("data", None, "model"))
    f = spmd.jit(lambda a: nn.one_hot(a, 32), out_shardings=out_sharding)
    assert f.lower(put(t, "data")).compile().collectives() == []
    got = f(put(t, "data"))
    want = (t[:, :, None] == np.arange(32)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(got), want)
    for shard in got.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


def test_one_hot_over_a_large_vocabulary_is_never_built_globally() -> None:
    # 64 x 2048 tokens x 32768 classes: the global iota alone is 17 GiB of int32. Batch on
    # all 8 devices: the per-device program holds [8, 2048, 32768] blocks, and compiling it
    # evaluates nothing at the global shape.
    sharding = NamedSharding(mesh("2x4"), P(("data", "model")))
    x = spmd.ShapeDtypeStruct((64, 2048, 32768), "bfloat16", sharding=sharding)
    t = spmd.ShapeDtypeStruct((64, 2048), "int32", sharding=sharding)

    def loss(logits: Any, targets: Any) -> Any:
        return -snp.mean(snp.sum(nn.log_softmax(logits) * nn.one_hot(targets, 32768), axis=-1))

    compiled = spmd.jit(loss).lower(x, t).compile()
    assert [(r.kind, r.bytes) for r in compiled.collectives()] == [("all_reduce", F32)]
    global_iota = 64 * 2048 * 32768 * 4
    assert compiled.memory_per_device() < global_iota // 2
    assert "64x2048x32768" not in compiled.as_text().replace(", ", "x")


def iota_view(n: int) -> tuple[GraphView, int]:
    """A pass's view of a program that has just defined an iota of n elements."""
    out = fresh_id()
    op = Op(
        "iota",
        (),
        (out,),
        (TensorType((n,), "int32"),),
        Attrs(dtype="int32", shape=(n,), dimension=0),
    )
    view = GraphView(Graph((), (), (op,), (out,)))
    view.add(op)
    return view, out


def test_large_iota_is_not_a_known_constant() -> None:
    # Passes ask GraphView for constant values; a large iota stays unknown (not built).
    view, big = iota_view(IOTA_LIMIT + 1)
    assert view.constant_value(big) is None
    view, small = iota_view(4)
    np.testing.assert_array_equal(view.constant_value(small), np.arange(4))


def test_take_along_axis_of_a_few_indices_per_row_stays_batch_local() -> None:
    # Three indices per row (a top-k's), batch on data: three compare-select-sums, no
    # collective; numerics as numpy's take_along_axis (negative indices wrapped).
    lp, _ = logits_and_targets()
    idx = np.random.default_rng(2).integers(-32, 32, (8, 4, 3)).astype(np.int32)
    f = spmd.jit(lambda a, i: snp.take_along_axis(a, i, axis=-1))
    args = (put(lp, "data"), put(idx, "data"))
    assert f.lower(*args).compile().collectives() == []
    want = np.take_along_axis(lp, np.where(idx < 0, idx + 32, idx), axis=-1)
    np.testing.assert_array_equal(np.asarray(f(*args)), want)
