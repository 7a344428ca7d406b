"""Exact collective inventories of well-known sharded programs: each expected record
(kind, axes, bytes, shape) is derived by hand in the test, and each record names the user
line that caused it (lines are found by their `# @tag` comment)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, nn
from tests.partitioner.helpers import assert_matches, mesh

FILE = os.path.basename(__file__)
F32 = 4  # bytes per float32


def line(tag: str) -> str:
    """`file:line` of the line of this file that carries the comment `# @tag`."""
    with open(__file__) as f:
        for number, text in enumerate(f, start=1):
            if text.rstrip().endswith(f"# @{tag}"):
                return f"{FILE}:{number}"
    raise LookupError(tag)


def sharding(mesh_name: str, *spec: Any) -> NamedSharding:
    return NamedSharding(mesh(mesh_name), P(*spec))


def put(x: np.ndarray, mesh_name: str, *spec: Any) -> spmd.Array:
    return spmd.device_put(x, sharding(mesh_name, *spec))


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def records(f: Any, *args: Any) -> list[Any]:
    out = f.lower(*args).compile().collectives()
    for r in out:
        assert r.reason, f"record without a reason: {r}"
        assert r.loc.startswith(FILE + ":"), f"record does not name this file: {r}"
    return out


def summary(recs: list[Any]) -> list[tuple[str, tuple[str, ...], int, tuple[int, ...]]]:
    return [(r.kind, r.axes, r.bytes, r.shape) for r in recs]


def check_against_unsharded(f_sharded: Any, fn: Any, args: list[Any], scale: float = 10.0) -> None:
    got = spmd.tree_leaves(f_sharded(*args))
    want = spmd.tree_leaves(spmd.jit(fn)(*[spmd.tree_map(np.asarray, a) for a in args]))
    for g, w in zip(got, want):
        assert_matches(np.asarray(g), np.asarray(w), scale)


# -- (a) data-parallel MLP training step ---------------------------------------------------


def mlp_loss(params: dict[str, Any], x: Any, y: Any) -> Any:
    hidden = snp.tanh(x @ params["w1"] + params["b1"])
    return snp.mean((hidden @ params["w2"] - y) ** 2)


def sgd_step(params: dict[str, Any], x: Any, y: Any) -> Any:
    loss, grads = spmd.value_and_grad(mlp_loss)(params, x, y)  # @dp_step
    return spmd.tree_map(lambda p, g: p - 0.1 * g, params, grads), loss


@pytest.mark.parametrize(
    "mesh_name,batch_axes", [("8", ("data",)), ("2x4", ("data",)), ("2x4", ("data", "model"))]
)
def test_data_parallel_step_is_one_all_reduce(mesh_name: str, batch_axes: tuple) -> None:
    params = {"w1": rand(16, 32), "b1": rand(32, seed=1), "w2": rand(32, 4, seed=2)}
    placed = {k: put(v, mesh_name) for k, v in params.items()}
    x = put(rand(64, 16, seed=3), mesh_name, batch_axes)
    y = put(rand(64, 4, seed=4), mesh_name, batch_axes)
    step = spmd.jit(sgd_step)
    recs = records(step, placed, x, y)
    # Gradients of w1 (16*32), b1 (32), w2 (32*4) plus the loss scalar, all pending sums over
    # the batch axes, bucketed into one all-reduce: (512 + 32 + 128 + 1) * 4 = 2692 bytes.
    param_bytes = (16 * 32 + 32 + 32 * 4) * F32
    assert summary(recs) == [("all_reduce", batch_axes, param_bytes + F32, (673,))]
    assert "bucket" in recs[0].reason
    check_against_unsharded(step, sgd_step, [placed, x, y])


# -- (b) Megatron MLP ----------------------------------------------------------------------


def megatron_mlp(x: Any, w1: Any, w2: Any) -> Any:
    hidden = nn.relu(x @ w1)  # @megatron_up
    return hidden @ w2  # @megatron_down


def megatron_loss(x: Any, w1: Any, w2: Any) -> Any:
    return snp.sum(snp.tanh(megatron_mlp(x, w1, w2)))  # @megatron_loss


def megatron_args(batch: int = 4, d_in: int = 16, d_hidden: int = 32, d_out: int = 8) -> list:
    return [
        put(rand(batch, d_in), "2x4"),
        put(rand(d_in, d_hidden, seed=1), "2x4", None, "model"),
        put(rand(d_hidden, d_out, seed=2), "2x4", "model", None),
    ]


def test_megatron_forward_is_one_all_reduce() -> None:
    args = megatron_args()
    f = spmd.jit(megatron_mlp)
    recs = records(f, *args)
    # w1 column-parallel: hidden is sharded on model, no collective. w2 row-parallel:
    # the contraction over the sharded hidden dim leaves a pending sum of the whole
    # (batch, d_out) = (4, 8) activation on every device: 4 * 8 * 4 = 128 bytes.
    assert summary(recs) == [("all_reduce", ("model",), 4 * 8 * F32, (4, 8))]
    assert recs[0].loc == line("megatron_down")
    check_against_unsharded(f, megatron_mlp, args)


def test_megatron_forward_and_backward_wrt_x() -> None:
    args = megatron_args()
    f = spmd.jit(spmd.value_and_grad(megatron_loss))
    recs = records(f, *args)
    # Forward: the (4, 8) activation before tanh (tanh is nonlinear): 128 bytes, caused
    # by tanh. Backward: dx = d_hidden @ w1.T contracts over the sharded hidden dim:
    # pending sum of (batch, d_in) = (4, 16): 256 bytes. One depends on the other: no bucket.
    assert summary(recs) == [
        ("all_reduce", ("model",), 4 * 8 * F32, (4, 8)),
        ("all_reduce", ("model",), 4 * 16 * F32, (4, 16)),
    ]
    check_against_unsharded(f, megatron_loss, args)


def test_gradient_records_name_the_user_line() -> None:
    recs = records(spmd.jit(spmd.value_and_grad(megatron_loss)), *megatron_args())
    assert recs[0].loc == line("megatron_loss")


# -- (c) attention, heads sharded over model -----------------------------------------------


def attention(x: Any, wq: Any, wk: Any, wv: Any, wo: Any) -> Any:
    q = snp.einsum("btd,dhk->bhtk", x, wq)
    k = snp.einsum("btd,dhk->bhtk", x, wk)
    v = snp.einsum("btd,dhk->bhtk", x, wv)
    probs = nn.softmax(snp.einsum("bhtk,bhsk->bhts", q, k) / 2.0, axis=-1)
    out = snp.einsum("bhts,bhsk->bhtk", probs, v)
    return snp.einsum("bhtk,hkd->btd", out, wo)  # @attention_out


def attention_weights(d_model: int = 16, heads: int = 8, d_head: int = 4) -> list:
    columns = [put(rand(d_model, heads, d_head, seed=s), "2x4", None, "model") for s in (1, 2, 3)]
    return columns + [put(rand(heads, d_head, d_model, seed=4), "2x4", "model")]


def test_attention_heads_sharded_is_one_all_reduce() -> None:
    args = [put(rand(4, 6, 16), "2x4")] + attention_weights()
    f = spmd.jit(attention)
    recs = records(f, *args)
    # q, k, v, scores, softmax (over keys, unsharded) and probs @ v are all per head: local.
    # The output projection contracts over (heads, d_head), heads sharded: pending sum of
    # (batch, time, d_model) = (4, 6, 16): 4 * 6 * 16 * 4 = 1536 bytes.
    assert summary(recs) == [("all_reduce", ("model",), 4 * 6 * 16 * F32, (4, 6, 16))]
    assert recs[0].loc == line("attention_out")
    check_against_unsharded(f, attention, args)


# -- (d) layernorm and (h) softmax over a sharded feature dim ------------------------------


def standardize(x: Any) -> Any:
    return nn.standardize(x)  # @standardize


def test_layernorm_over_sharded_features_moves_only_row_statistics() -> None:
    x = put(rand(8, 16), "2x4", "data", "model")
    recs = records(spmd.jit(standardize), x)
    # Rows are sharded on data (8 / 2 = 4 local rows), features on model. Only per-row
    # statistics (at most 2 values per local row) cross devices, never the (4, 4) shard.
    assert recs and all(r.kind == "all_reduce" and r.axes == ("model",) for r in recs)
    assert sum(r.bytes for r in recs) <= 3 * 4 * F32
    assert all(r.loc == line("standardize") for r in recs)
    check_against_unsharded(spmd.jit(standardize), standardize, [x])


def test_layernorm_is_two_small_all_reduces() -> None:
    x = put(rand(8, 16), "2x4", "data", "model")
    recs = records(spmd.jit(standardize), x)
    # mean and variance: one all-reduce each of the 4 local rows' sums = 16 bytes (the row
    # sum is resolved before its keepdims reshape or after it: the same 4 floats).
    assert [(r.kind, r.axes, r.bytes) for r in recs] == [("all_reduce", ("model",), 4 * F32)] * 2
    assert all(int(np.prod(r.shape)) == 4 for r in recs)


def softmax(x: Any) -> Any:
    return nn.softmax(x, axis=-1)  # @softmax


def test_softmax_over_sharded_dim_is_max_then_sum() -> None:
    x = put(rand(8, 16), "2x4", "data", "model")
    recs = records(spmd.jit(softmax), x)
    # Row max (pending max over model) then row sum of exp (pending sum over model), each
    # of the 4 local rows: 4 * 4 = 16 bytes; the (4, 4) shard itself never moves.
    assert [(r.kind, r.axes, r.bytes) for r in recs] == [("all_reduce", ("model",), 16)] * 2
    assert "max" in recs[0].reason and "sum" in recs[1].reason
    assert all(r.loc == line("softmax") for r in recs)
    check_against_unsharded(spmd.jit(softmax), softmax, [x])


# -- (e) reduce-scatter, (f) all-to-all, (g) all-gather ------------------------------------


def contract_then_shard(a: Any, b: Any) -> Any:
    product = a @ b
    return spmd.with_sharding_constraint(product, sharding("2x4", "model", None))  # @constraint


def test_contraction_into_sharded_consumer_is_one_reduce_scatter() -> None:
    args = [put(rand(8, 16), "2x4", None, "model"), put(rand(16, 12, seed=1), "2x4", "model")]
    f = spmd.jit(contract_then_shard)
    recs = records(f, *args)
    # The local product is a pending sum of the whole (8, 12): the operand of the
    # reduce-scatter is that full buffer, 8 * 12 * 4 = 384 bytes; no all-reduce.
    assert summary(recs) == [("reduce_scatter", ("model",), 8 * 12 * F32, (8, 12))]
    assert recs[0].loc == line("constraint")
    out = f(*args)
    assert out.sharding == sharding("2x4", "model")
    check_against_unsharded(f, contract_then_shard, args)


def double(a: Any) -> Any:
    return a * 2.0  # @double


def test_moving_a_sharded_dim_is_one_all_to_all() -> None:
    x = put(rand(8, 16), "2x4", "model", None)
    f = spmd.jit(double, out_shardings=sharding("2x4", None, "model"))
    recs = records(f, x)
    # Local buffer (8 / 4, 16) = (2, 16): 2 * 16 * 4 = 128 bytes into one all-to-all.
    assert summary(recs) == [("all_to_all", ("model",), 2 * 16 * F32, (2, 16))]
    assert recs[0].loc == line("double")
    out = f(x)
    assert out.sharding == sharding("2x4", None, "model")
    assert_matches(np.asarray(out), np.asarray(x) * 2)


@pytest.mark.parametrize("rows", [8, 10])
def test_unsharding_a_dim_is_one_all_gather_of_the_local_shard(rows: int) -> None:
    x = put(rand(rows, 16), "2x4", "model", None)
    f = spmd.jit(double, out_shardings=sharding("2x4"))
    recs = records(f, x)
    # The operand is the local (padded) shard: ceil(rows / 4) x 16 float32.
    local_rows = -(-rows // 4)
    assert summary(recs) == [("all_gather", ("model",), local_rows * 16 * F32, (local_rows, 16))]
    assert recs[0].loc == line("double")
    assert_matches(np.asarray(f(x)), np.asarray(x) * 2)


# -- (i) a 2D (data x model) transformer block ---------------------------------------------


def transformer_block(x: Any, wq: Any, wk: Any, wv: Any, wo: Any, w1: Any, w2: Any) -> Any:
    x = x + attention(nn.standardize(x), wq, wk, wv, wo)  # @block_attention
    return x + nn.relu(nn.standardize(x) @ w1) @ w2  # @block_mlp


def test_2d_transformer_block_is_two_all_reduces_over_model() -> None:
    batch, time, d_model, d_ff = 4, 6, 16, 32
    mlp = [
        put(rand(d_model, d_ff, seed=5), "2x4", None, "model"),
        put(rand(d_ff, d_model, seed=6), "2x4", "model"),
    ]
    args = [put(rand(batch, time, d_model), "2x4", "data")] + attention_weights() + mlp
    f = spmd.jit(transformer_block)
    recs = records(f, *args)
    # Batch on data (4 / 2 = 2 local), features unsharded: layernorms are local. Attention
    # and MLP each end in a row-parallel contraction: pending sum of the local activation
    # (2, 6, 16) = 768 bytes over model, resolved by the residual add. Nothing over data.
    local = (batch // 2, time, d_model)
    assert summary(recs) == [("all_reduce", ("model",), 2 * 6 * 16 * F32, local)] * 2
    assert [r.loc for r in recs] == [line("block_attention"), line("block_mlp")]
    check_against_unsharded(f, transformer_block, args)
