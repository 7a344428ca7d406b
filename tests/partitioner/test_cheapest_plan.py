"""The partitioner picks the cheapest plan by bytes moved (issue 22). Each test derives the
bytes of the chosen plan and of the rejected one by hand (DESIGN.md's table: all-gather
moves V(n-1), all-reduce 2V(n-1)/n, all-to-all V(n-1)/n, a permute V, with V the operand a
device feeds in) and checks the report names both; numerics against the unsharded run."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import spmd
from tests.partitioner.test_collective_inventory import (
    F32,
    check_against_unsharded,
    put,
    rand,
    sharding,
    summary,
)

FILE = os.path.basename(__file__)


def records(f: Any, *args: Any) -> list[Any]:
    out = f.lower(*args).compile().collectives()
    for r in out:
        assert r.reason and r.loc.startswith(FILE + ":"), f"record without reason or line: {r}"
    return out


def flatten_matmul(x: Any, w: Any) -> Any:
    return x.reshape(128, 32) @ w


def test_reshape_merging_sharded_dim_then_matmul_gathers_the_operand() -> None:
    # x [8, 16, 32] on (data, -, model): the reshape merges the data dim (major) into 128
    # rows, local [64, 8]. w [32, 48] replicated. Reduce the result: slice w, all-reduce the
    # pending [64, 48] f32 (12288 B), moving 2 * 12288 * 3/4 = 18432 B. Gather the operand:
    # all-gather x's [64, 8] (2048 B) over model, moving 2048 * 3 = 6144 B: XLA's choice too.
    args = [put(rand(8, 16, 32), "2x4", "data", None, "model"), put(rand(32, 48, seed=1), "2x4")]
    f = spmd.jit(flatten_matmul)
    recs = records(f, *args)
    assert summary(recs) == [("all_gather", ("model",), 64 * 8 * F32, (64, 8))]
    assert recs[0].moved == 6144
    assert "gather the operands 6144 B" in recs[0].reason
    assert "reduce the result 18432 B" in recs[0].reason
    check_against_unsharded(f, flatten_matmul, args)


def narrow_matmul(x: Any, w: Any) -> Any:
    return x @ w


def test_contraction_keeps_the_pending_sum_when_the_result_is_smaller() -> None:
    # x [64, 32] on (-, model), local [64, 8]; w [32, 4] replicated. Reduce the result:
    # all-reduce [64, 4] f32 = 1024 B, moving 2 * 1024 * 3/4 = 1536 B. Gather the operand:
    # all-gather [64, 8] = 2048 B, moving 6144 B. The report names the rejected plan.
    args = [put(rand(64, 32), "2x4", None, "model"), put(rand(32, 4, seed=1), "2x4")]
    f = spmd.jit(narrow_matmul)
    recs = records(f, *args)
    assert summary(recs) == [("all_reduce", ("model",), 64 * 4 * F32, (64, 4))]
    assert recs[0].moved == 1536
    assert "reduce the result 1536 B moved over gather the operands 6144 B" in recs[0].reason
    check_against_unsharded(f, narrow_matmul, args)


def sum_of_product(x: Any, w: Any) -> Any:
    return spmd.numpy.sum(x @ w)


def test_pending_sum_priced_where_it_resolves() -> None:
    # x [64, 32] on (-, model), w [32, 48] replicated. The [64, 48] product is only summed:
    # the pending sum passes through the (linear) sum and resolves as a scalar all-reduce,
    # 4 B moving 2 * 4 * 3/4 = 6 B, far below gathering x (6144 B).
    args = [put(rand(64, 32), "2x4", None, "model"), put(rand(32, 48, seed=1), "2x4")]
    f = spmd.jit(sum_of_product)
    recs = records(f, *args)
    assert summary(recs) == [("all_reduce", ("model",), F32, ())]
    check_against_unsharded(f, sum_of_product, args, scale=100.0)


def test_data_parallel_gradient_keeps_the_sum() -> None:
    # dW = x.T @ dy with the batch (contracted) sharded in both operands: no gather plan is
    # considered (it would repeat the whole contraction on each device), one all-reduce of
    # the [16, 4] gradient: 256 B.
    def grad_w(x: Any, w: Any) -> Any:
        return spmd.grad(lambda w_: spmd.numpy.sum((x @ w_) ** 2))(w)

    args = [put(rand(8, 16), "2x4", "data"), put(rand(16, 4, seed=1), "2x4")]
    f = spmd.jit(grad_w)
    assert summary(records(f, *args)) == [("all_reduce", ("data",), 16 * 4 * F32, (16, 4))]
    check_against_unsharded(f, grad_w, args)


def test_report_moved_bytes_follow_the_table() -> None:
    # One of each kind on a 2x4 mesh; x [16, 32] f32 = 2048 B globally.
    x = rand(16, 32)
    gathered = spmd.jit(lambda a: a * 2.0, out_shardings=sharding("2x4"))
    (ag,) = records(gathered, put(x, "2x4", "model"))
    assert (ag.kind, ag.bytes, ag.moved) == ("all_gather", 512, 512 * 3)
    moved = spmd.jit(lambda a: a * 2.0, out_shardings=sharding("2x4", None, "model"))
    (a2a,) = records(moved, put(x, "2x4", "model"))
    assert (a2a.kind, a2a.bytes, a2a.moved) == ("all_to_all", 512, 512 * 3 / 4)
    np.testing.assert_allclose(np.asarray(moved(put(x, "2x4", "model"))), x * 2.0)


def transpose(a: Any) -> Any:
    return a.T


def test_transpose_of_2d_sharded_array_into_same_out_sharding_uses_permutes() -> None:
    # x [16, 32] on (data, model): block [8, 8] = 256 B. x.T [32, 16] on (data, model):
    # block [16, 4]. Device (d, m) holds rows 8d..8d+8 and columns 8m..8m+8; its new block
    # wants x's columns 16d'..16d'+16 and rows 4m'..4m'+4: old block (d, m) splits into two
    # [4, 8] pieces (128 B) for devices (m // 2, 2d) and (m // 2, 2d + 1); on (0,0), (0,1),
    # (1,2) and (1,3) one of them is local. Two permute rounds of 128 B move 256 B; gathering
    # both dims first moves 256 * 1 + 512 * 3 = 1792 B. XLA: an all-to-all and a permute of
    # 256 B each (512 B operands).
    x = rand(16, 32)
    f = spmd.jit(transpose, out_shardings=sharding("2x4", "data", "model"))
    recs = records(f, put(x, "2x4", "data", "model"))
    assert summary(recs) == [("collective_permute", ("data", "model"), 128, (4, 8))] * 2
    assert sum(r.moved for r in recs) == 256
    assert "gather/all-to-all steps 1792 B" in recs[0].reason
    out = f(put(x, "2x4", "data", "model"))
    np.testing.assert_array_equal(np.asarray(out), x.T)
    for shard in out.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), x.T[shard.index])


def test_device_order_change_is_one_permute() -> None:
    # x [16, 4] on (data, model) in dim 0 -> (model, data): same block size [2, 4] (32 B),
    # different device per block: one permute of 32 B, where gathering would move 7 x 32 B.
    x = rand(16, 4)
    f = spmd.jit(lambda a: a + 1.0, out_shardings=sharding("2x4", ("model", "data")))
    recs = records(f, put(x, "2x4", ("data", "model")))
    assert [(r.kind, r.bytes, r.moved) for r in recs] == [("collective_permute", 32, 32)]
    np.testing.assert_array_equal(np.asarray(f(put(x, "2x4", ("data", "model")))), x + 1.0)


def test_pending_sum_of_bf16_values_is_summed_in_bf16() -> None:
    # Mixed precision: w is float32, the matmul runs in bfloat16. dW = x.T @ ct is a pending
    # bf16 sum over data; the cast back to float32 (astype's gradient) must not widen the
    # collective: one all-reduce of [16, 4] bf16 = 128 B, as XLA's partitioner emits it (the
    # float32 one would be 256 B).
    def grad_w(x: Any, w: Any) -> Any:
        return spmd.grad(lambda w_: spmd.numpy.sum((x @ w_.astype("bfloat16")).astype("float32")))(
            w
        )

    x = rand(8, 16).astype("bfloat16")
    args = [put(x, "2x4", "data"), put(rand(16, 4, seed=1), "2x4")]
    f = spmd.jit(grad_w)
    recs = records(f, *args)
    assert [(r.kind, r.axes, r.bytes, r.dtype) for r in recs] == [
        ("all_reduce", ("data",), 16 * 4 * 2, "bfloat16")
    ]
    # Two bf16 partial sums added in bf16 round once more than the unsharded dot (XLA too):
    # agreement to bf16's precision (8 bits of mantissa).
    got = np.asarray(f(*args)).astype(np.float64)
    want = np.asarray(spmd.jit(grad_w)(x, rand(16, 4, seed=1))).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=2**-6, atol=2**-6 * np.abs(want).max())


def middle_rows(a: Any) -> Any:
    return a[4:12] * 1.0


def test_slice_kept_sharded_moves_only_the_rows_of_the_new_blocks() -> None:
    # a [16, 32] on model: blocks of 4 rows. a[4:12] on model: blocks of 2 rows, device j
    # wants rows 4+2j, 5+2j. Devices 1 and 2 hold their own; device 0 needs rows 4-5 from
    # device 1, device 3 rows 10-11 from device 2: one permute round of [2, 32] f32 (256 B,
    # moved 256 B). Gathering the dim then slicing: all-gather [4, 32] (512 B, moves 1536 B).
    x = rand(16, 32)
    f = spmd.jit(middle_rows, out_shardings=sharding("2x4", "model"))
    recs = records(f, put(x, "2x4", "model"))
    assert summary(recs) == [("collective_permute", ("model",), 2 * 32 * F32, (2, 32))]
    assert "gathering the dim 1536 B" in recs[0].reason
    out = f(put(x, "2x4", "model"))
    np.testing.assert_array_equal(np.asarray(out), x[4:12])
    for shard in out.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), x[4:12][shard.index])


def lookup(table: Any, idx: Any) -> Any:
    return spmd.numpy.take(table, idx, axis=0)


def test_gather_from_a_row_sharded_table_looks_up_rows_where_they_live() -> None:
    # table [64, 32] on model (16 rows per device), 16 replicated indices. Each device
    # looks up the indices in its rows (0 elsewhere): a pending sum of the [16, 32] result,
    # all-reduced: 2048 B, moving 2 * 2048 * 3/4 = 3072 B. Gathering the table: all-gather
    # [16, 32] (2048 B), moving 6144 B (XLA all-reduces too).
    table = rand(64, 32)
    idx = np.array([0, 63, 17, 16, 15, 40, 41, 5, -1, 70, 33, 34, 2, 48, 49, 31], np.int32)
    f = spmd.jit(lookup)
    args = [put(table, "2x4", "model"), put(idx, "2x4")]
    recs = records(f, *args)
    assert summary(recs) == [("all_reduce", ("model",), 16 * 32 * F32, (16, 32))]
    assert "gathering the table 6144 B" in recs[0].reason
    np.testing.assert_array_equal(np.asarray(f(*args)), np.asarray(spmd.jit(lookup)(table, idx)))


def stack_rows(a: Any, c: Any) -> Any:
    return spmd.numpy.concatenate([a, c], axis=0)


def test_concatenate_along_the_sharded_dim_sends_each_block_its_rows() -> None:
    # a, c [16, 32] on model (blocks of 4 rows) -> [32, 32] on model (blocks of 8 rows):
    # device j's block is a's (j < 2) or c's (j >= 2) blocks 2j', 2j'+1. Sends: device 0
    # c0 -> 2; device 1 a1 -> 0, c1 -> 2; device 2 a2 -> 1, c2 -> 3; device 3 a3 -> 1
    # (a0 and c3 are already in place): two permute rounds of [4, 32] f32 (512 B), moving
    # 1024 B. Gathering both operands: two all-gathers of 512 B, moving 3072 B. XLA: three
    # all-to-alls, 2048 B of operands moving 1536 B.
    a, c = rand(16, 32), rand(16, 32, seed=1)
    f = spmd.jit(stack_rows, out_shardings=sharding("2x4", "model"))
    args = [put(a, "2x4", "model"), put(c, "2x4", "model")]
    recs = records(f, *args)
    assert summary(recs) == [("collective_permute", ("model",), 4 * 32 * F32, (4, 32))] * 2
    assert "gathering the operands 3072 B" in recs[0].reason
    out = f(*args)
    want = np.concatenate([a, c])
    np.testing.assert_array_equal(np.asarray(out), want)
    for shard in out.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


def pad_rows(a: Any) -> Any:
    return spmd.lax.pad(a, np.float32(7), ((4, 4, 0), (0, 0, 0)))


def test_pad_of_the_sharded_dim_kept_sharded_shifts_rows_by_permutes() -> None:
    # a [16, 32] on model (4 rows per device), padded by 4 rows each side -> [24, 32] on
    # model (6 rows per device). Device j holds result rows 6j..6j+6 = a's rows 6j-4..6j+2:
    # device 1 needs a's rows 2-3 from device 0, device 2 rows 12-13 from device 3, the
    # rest is local or padding. One permute round of [2, 32] f32 (256 B, moving 256 B)
    # against gathering the dim (all-gather of 512 B, moving 1536 B).
    x = rand(16, 32)
    f = spmd.jit(pad_rows, out_shardings=sharding("2x4", "model"))
    recs = records(f, put(x, "2x4", "model"))
    assert summary(recs) == [("collective_permute", ("model",), 2 * 32 * F32, (2, 32))]
    assert "gathering the dim 1536 B" in recs[0].reason
    out = f(put(x, "2x4", "model"))
    want = np.pad(x, ((4, 4), (0, 0)), constant_values=7.0)
    np.testing.assert_array_equal(np.asarray(out), want)
    for shard in out.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


def embedding_grad(table: Any, idx: Any) -> Any:
    return spmd.grad(lambda t: spmd.numpy.sum(spmd.numpy.take(t, idx, axis=0) ** 2))(table)


def test_embedding_gradient_adds_each_devices_updates_locally() -> None:
    # table [64, 32] on (-, model): local [64, 8]; idx [16, 8] on data: local [8, 8]. The
    # gradient scatter-adds [16, 8, 32] updates (local [8, 8, 8]) into the table. Each
    # device adds its own batch's updates: a pending sum over data of the [64, 8] block,
    # all-reduced: 2048 B, moving 2 * 2048 * 1/2 = 2048 B. Gathering the updates and the
    # indices instead moves 2048 + 256 = 2304 B. XLA all-reduces the [64, 8] block too.
    table = rand(64, 32)
    idx = np.random.default_rng(3).integers(0, 64, (16, 8)).astype(np.int32)
    f = spmd.jit(embedding_grad)
    args = [put(table, "2x4", None, "model"), put(idx, "2x4", "data")]
    recs = records(f, *args)
    assert summary(recs) == [("all_reduce", ("data",), 64 * 8 * F32, (64, 8))]
    assert "gathering them 2304 B" in recs[0].reason
    got = np.asarray(f(*args))
    want = np.zeros_like(table)
    np.add.at(want, idx, 2 * table[idx])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def flatten(a: Any) -> Any:
    return a.reshape(-1) * 1.0


def test_reshape_merging_a_2d_sharded_array_moves_the_minor_axis_once() -> None:
    # x [16, 32] on (data, model): block [8, 8]. Flattened on (data, model): 64 elements
    # = 2 whole rows per device, i.e. rows on (data, model) and columns whole: one
    # all-to-all over model moving it from dim 1 to dim 0, [8, 8] f32 = 256 B in, moving
    # 256 * 3/4 = 192 B (XLA: the same all-to-all).
    x = rand(16, 32)
    f = spmd.jit(flatten, out_shardings=sharding("2x4", ("data", "model")))
    recs = records(f, put(x, "2x4", "data", "model"))
    assert [(r.kind, r.axes, r.bytes, r.moved) for r in recs] == [
        ("all_to_all", ("model",), 8 * 8 * F32, 192)
    ]
    np.testing.assert_array_equal(np.asarray(f(put(x, "2x4", "data", "model"))), x.reshape(-1))


def middle_columns(a: Any) -> Any:
    u = spmd.with_sharding_constraint(a * 2.0, sharding("2x4", None, "model"))
    return u[:, 12:18] * 1.0


def test_slice_of_an_uneven_dim_then_replicated_realigns_the_window_first() -> None:
    # u [8, 30] on (-, model): shards of 8 columns (the last 6). u[:, 12:18] replicated.
    # Realign the 6 columns onto blocks of ceil(6/4) = 2: device 0 wants columns 12-13
    # (device 1's), devices 1 and 2 hold theirs, device 3 none: one permute of [8, 2] f32
    # (64 B, moving 64 B); then the uneven all-gather of the [8, 2] blocks (64 B, moving
    # 192 B). 128 B in, 256 B moved, against gathering the 8-column shards (256 B in, 768 B
    # moved). XLA: 192 B in, 320 B moved.
    x = rand(8, 30)
    f = spmd.jit(middle_columns, out_shardings=sharding("2x4"))
    recs = records(f, x)
    assert [(r.kind, r.axes, r.bytes, r.shape) for r in recs] == [
        ("collective_permute", ("model",), 8 * 2 * F32, (8, 2)),
        ("all_gather", ("model",), 8 * 2 * F32, (8, 2)),
    ]
    assert sum(r.moved for r in recs) == 256
    assert "gathering the dim 768 B" in recs[0].reason
    np.testing.assert_array_equal(np.asarray(f(x)), (x * 2.0)[:, 12:18])
