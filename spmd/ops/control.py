"""Control-flow ops holding sub-graphs in their attrs: scan, cond, while_loop.

The partitioner treats each sub-graph (scan body, cond branch, while cond/body) as a
sub-program: the factors below only relate the op's operands to its results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.autodiff import backward, replay, trace_flat, vjp_graph
from spmd.errors import DTypeError, ShapeError
from spmd.ir.graph import Graph
from spmd.ir.types import TensorType
from spmd.ops.opdef import NONDIFF, Factors, OpDef, Trait
from spmd.ops.scan_residuals import split_residuals
from spmd.ops.subgraph import (
    check_params,
    ct_or_zeros,
    evaluate_graph,
    factor_names,
    fresh_dims,
    is_diff,
    same_type,
)
from spmd.passes.dce import dce
from spmd.tracing import bind

# scan -----------------------------------------------------------------------------------


def _scan_type(
    *operands: TensorType, body: Graph, num_consts: int, num_carry: int, length: int, reverse: bool
) -> tuple[TensorType, ...]:
    fixed = num_consts + num_carry
    if len(operands) < fixed:
        raise ShapeError(
            f"scan has {len(operands)} operands but {num_consts} consts and {num_carry} carries"
        )
    xs = operands[fixed:]
    for x in xs:
        if x.ndim == 0 or x.shape[0] != length:
            raise ShapeError(
                f"scan over length {length} got xs of shape {x.shape}",
                hint="every xs leaf needs the scan length as its leading dim",
            )
    slices = [TensorType(x.shape[1:], x.dtype, x.weak) for x in xs]
    check_params("scan", body, list(operands[:fixed]) + slices)
    results = body.result_types
    carry = operands[num_consts:fixed]
    if len(results) < num_carry:
        raise ShapeError(
            f"scan body returns {len(results)} values, fewer than its {num_carry} carries"
        )
    for i, (c, r) in enumerate(zip(carry, results)):
        if not same_type(c, r):
            raise ShapeError(f"scan carry {i} goes in as {c} and comes out as {r}")
    ys = tuple(TensorType((length,) + t.shape, t.dtype, t.weak) for t in results[num_carry:])
    return tuple(carry) + ys


def _scan_ref(
    *args: np.ndarray, body: Graph, num_consts: int, num_carry: int, length: int, reverse: bool
) -> tuple[np.ndarray, ...]:
    fixed = num_consts + num_carry
    consts = list(args[:num_consts])
    carry = list(args[num_consts:fixed])
    xs = args[fixed:]
    ys = [
        np.empty((length,) + t.shape, dtypes.to_numpy(t.dtype))
        for t in body.result_types[num_carry:]
    ]
    for i in reversed(range(length)) if reverse else range(length):
        outs = evaluate_graph(body, consts + carry + [x[i] for x in xs])
        carry = outs[:num_carry]
        for y, value in zip(ys, outs[num_carry:]):
            y[i] = value
    return tuple(carry) + tuple(ys)


def _scan_factors(
    *types: TensorType, body: Graph, num_consts: int, num_carry: int, length: int, reverse: bool
) -> Factors:
    """Each dim its own factor, except: the scan dim of xs and ys is one blocked factor,
    and a carry's dims are shared by the init and the final carry."""
    names = factor_names()
    step = next(names)
    fixed = num_consts + num_carry
    consts = [fresh_dims(names, t) for t in types[:num_consts]]
    carry = [fresh_dims(names, t) for t in types[num_consts:fixed]]
    xs = [(step,) + fresh_dims(names, t)[1:] for t in types[fixed:]]
    ys = [(step,) + fresh_dims(names, t) for t in body.result_types[num_carry:]]
    return Factors(tuple(consts + carry + xs), tuple(carry + ys), blocked=frozenset({step}))


def _scan_vjp(
    cts: Sequence[Any],
    *primals: Any,
    out: Any,
    body: Graph,
    num_consts: int,
    num_carry: int,
    length: int,
    reverse: bool,
) -> tuple[Any, ...]:
    """A forward scan stacks each step's input carry and the residuals the backward step
    needs (spmd/ops/scan_residuals.py), then a reverse scan runs the body's VJP on them,
    carrying the carry's cotangent and the consts' summed cotangent."""
    nc, ncar = num_consts, num_carry
    fixed = nc + ncar
    const_t = body.param_types[:nc]
    carry_t = body.param_types[nc:fixed]
    x_t = body.param_types[fixed:]
    y_t = body.result_types[ncar:]
    d_const = [i for i, t in enumerate(const_t) if is_diff(t)]
    d_carry = [i for i, t in enumerate(carry_t) if is_diff(t)]
    d_x = [i for i, t in enumerate(x_t) if is_diff(t)]
    d_y = [i for i, t in enumerate(y_t) if is_diff(t) and cts[ncar + i] is not None]
    if not (d_const or d_carry or d_x):
        return (None,) * len(primals)
    keep = body.replace(results=body.results[:ncar] + body.params[nc:fixed])
    step = _scan_vjp_step(body, nc, ncar, d_const, d_carry, d_x, d_y)
    in_types = (
        list(const_t)
        + [carry_t[i] for i in d_carry]
        + [const_t[i] for i in d_const]
        + list(carry_t)
        + list(x_t)
        + [y_t[i] for i in d_y]
    )
    graph, captured = trace_flat(step, in_types)
    # the step's consts, carry and xs params stand for the body's params
    n_ct = len(d_carry) + len(d_const)
    primal_params = graph.params[:nc] + graph.params[nc + n_ct : nc + n_ct + len(body.params) - nc]
    split = split_residuals(graph, keep, primal_params, len(in_types))
    if split is not None:
        keep, graph = split.forward, split.backward
    forward = bind(
        "scan",
        *primals,
        body=dce(keep),
        num_consts=nc,
        num_carry=ncar,
        length=length,
        reverse=reverse,
    )
    residuals = forward[2 * ncar :]
    graph = hoist_captures(graph, len(captured))
    ct_carry = [ct_or_zeros(cts[i], carry_t[i]) for i in d_carry]
    acc = [ct_or_zeros(None, const_t[i]) for i in d_const]
    stacked_y = [TensorType((length,) + y_t[i].shape, y_t[i].dtype) for i in d_y]
    ct_ys = [ct_or_zeros(cts[ncar + i], t) for i, t in zip(d_y, stacked_y)]
    outs = bind(
        "scan",
        *captured,
        *primals[:nc],
        *ct_carry,
        *acc,
        *forward[ncar : 2 * ncar],
        *primals[fixed:],
        *ct_ys,
        *residuals,
        body=graph,
        num_consts=len(captured) + nc,
        num_carry=len(d_carry) + len(d_const),
        length=length,
        reverse=not reverse,
    )
    result: list[Any] = [None] * len(primals)
    found = iter(outs)
    for i in d_carry:
        result[nc + i] = next(found)
    for i in d_const:
        result[i] = next(found)
    for i in d_x:
        result[fixed + i] = next(found)
    return tuple(result)


def _scan_vjp_step(
    body: Graph,
    nc: int,
    ncar: int,
    d_const: list[int],
    d_carry: list[int],
    d_x: list[int],
    d_y: list[int],
) -> Any:
    """One backward step: (consts, ct_carry, acc, carry_i, x_i, ct_y_i) ->
    (ct of carry_i, acc + ct of consts, ct of x_i)."""
    nx = len(body.params) - nc - ncar

    def step(*args: Any) -> list[Any]:
        it = iter(args)

        def take(n: int) -> list[Any]:
            return [next(it) for _ in range(n)]

        consts, ct_carry, acc = take(nc), take(len(d_carry)), take(len(d_const))
        carry, xs, ct_y = take(ncar), take(nx), take(len(d_y))
        env = replay(body, consts + carry + xs)
        result_cts: list[Any] = [None] * len(body.results)
        for i, ct in zip(d_carry, ct_carry):
            result_cts[i] = ct
        for i, ct in zip(d_y, ct_y):
            result_cts[ncar + i] = ct
        param_cts = backward(body, env, result_cts)
        new_acc = [prim.add(a, param_cts[i]) for a, i in zip(acc, d_const)]
        return (
            [param_cts[nc + i] for i in d_carry] + new_acc + [param_cts[nc + ncar + i] for i in d_x]
        )

    return step


def hoist_captures(graph: Graph, n_captured: int) -> Graph:
    """Move the last n_captured params (values captured by tracing) to the front."""
    if n_captured == 0:
        return graph
    k = len(graph.params) - n_captured
    return graph.replace(
        params=graph.params[k:] + graph.params[:k],
        param_types=graph.param_types[k:] + graph.param_types[:k],
    )


# cond -----------------------------------------------------------------------------------


def _cond_type(
    index: TensorType, *operands: TensorType, branches: tuple[Graph, ...]
) -> tuple[TensorType, ...]:
    if index.shape != () or index.dtype != "int32":
        raise DTypeError(f"cond needs an int32 scalar branch index, got {index}")
    if not branches:
        raise ShapeError("cond needs at least one branch")
    for graph in branches:
        check_params("cond", graph, operands)
    first = branches[0].result_types
    for graph in branches[1:]:
        other = graph.result_types
        if len(other) != len(first) or not all(map(same_type, first, other)):
            raise ShapeError(
                "cond branches return different types: "
                f"{', '.join(map(str, first))} vs {', '.join(map(str, other))}"
            )
    return tuple(
        TensorType(t.shape, t.dtype, all(g.result_types[i].weak for g in branches))
        for i, t in enumerate(first)
    )


def _cond_ref(
    index: np.ndarray, *operands: np.ndarray, branches: tuple[Graph, ...]
) -> tuple[np.ndarray, ...]:
    chosen = int(np.clip(index, 0, len(branches) - 1))
    return tuple(evaluate_graph(branches[chosen], operands))


def _cond_factors(index: TensorType, *operands: TensorType, branches: tuple[Graph, ...]) -> Factors:
    names = factor_names()
    ins = [()] + [fresh_dims(names, t) for t in operands]
    outs = [fresh_dims(names, t) for t in branches[0].result_types]
    return Factors(tuple(ins), tuple(outs))


def _cond_vjp(
    cts: Sequence[Any], index: Any, *operands: Any, out: Any, branches: tuple[Graph, ...]
) -> tuple[Any, ...]:
    """A cond over the branches' VJP graphs, on the same index."""
    mask = [is_diff(t) for t in branches[0].param_types]
    if not any(mask):
        return (None,) * (1 + len(operands))
    result_types = branches[0].result_types
    ct_args = [ct_or_zeros(ct, t) for ct, t in zip(cts, result_types) if is_diff(t)]
    graphs = tuple(vjp_graph(graph, mask) for graph in branches)
    outs = iter(bind("cond", index, *operands, *ct_args, branches=graphs))
    return (None,) + tuple(next(outs) if m else None for m in mask)


# while_loop -----------------------------------------------------------------------------


def _while_type(
    *operands: TensorType,
    cond_graph: Graph,
    body_graph: Graph,
    cond_num_consts: int,
    body_num_consts: int,
) -> tuple[TensorType, ...]:
    fixed = cond_num_consts + body_num_consts
    carry = operands[fixed:]
    check_params("while_loop cond", cond_graph, list(operands[:cond_num_consts]) + list(carry))
    check_params("while_loop body", body_graph, list(operands[cond_num_consts:fixed]) + list(carry))
    pred = cond_graph.result_types
    if len(pred) != 1 or pred[0].shape != () or pred[0].dtype != "bool":
        raise DTypeError(
            f"while_loop cond must return one bool scalar, got {', '.join(map(str, pred))}"
        )
    out = body_graph.result_types
    if len(out) != len(carry) or not all(map(same_type, carry, out)):
        raise ShapeError(
            f"while_loop body turns {', '.join(map(str, carry))} into {', '.join(map(str, out))}"
        )
    return tuple(carry)


def _while_ref(
    *args: np.ndarray,
    cond_graph: Graph,
    body_graph: Graph,
    cond_num_consts: int,
    body_num_consts: int,
) -> tuple[np.ndarray, ...]:
    fixed = cond_num_consts + body_num_consts
    cond_consts = list(args[:cond_num_consts])
    body_consts = list(args[cond_num_consts:fixed])
    carry = list(args[fixed:])
    while bool(evaluate_graph(cond_graph, cond_consts + carry)[0]):
        carry = evaluate_graph(body_graph, body_consts + carry)
    return tuple(carry)


def _while_factors(
    *types: TensorType,
    cond_graph: Graph,
    body_graph: Graph,
    cond_num_consts: int,
    body_num_consts: int,
) -> Factors:
    names = factor_names()
    fixed = cond_num_consts + body_num_consts
    consts = [fresh_dims(names, t) for t in types[:fixed]]
    carry = [fresh_dims(names, t) for t in types[fixed:]]
    return Factors(tuple(consts + carry), tuple(carry))


OPS = [
    OpDef(
        "scan",
        _scan_type,
        _scan_ref,
        _scan_vjp,
        _scan_factors,
        multi_output=True,
        doc="Loop a body graph over the leading dim of xs, threading a carry.",
        traits=Trait.CONTROL | Trait.COUNTED_LOOP,
    ),
    OpDef(
        "cond",
        _cond_type,
        _cond_ref,
        _cond_vjp,
        _cond_factors,
        multi_output=True,
        doc="Run the branch graph picked by a (clamped) int32 index.",
        traits=Trait.CONTROL,
    ),
    OpDef(
        "while_loop",
        _while_type,
        _while_ref,
        NONDIFF,
        _while_factors,
        multi_output=True,
        doc="Run body_graph while cond_graph holds (not reverse-differentiable, as in JAX).",
        traits=Trait.CONTROL,
    ),
]
