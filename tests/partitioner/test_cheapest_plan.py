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
