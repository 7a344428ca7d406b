"""Rematerialisation (JAX's jax.checkpoint): the `remat` op, `checkpoint_name`, the policies,
and the split of a remat region's VJP into a forward that saves what the policy allows and
a backward that recomputes the rest.

`remat` holds a sub-graph `body`; with recompute=True it is a backward region whose primal
ops rerun the forward (spmd/passes/inline_remat.py inlines both kinds after CSE, so the
recomputation is not merged back into the forward). Sharding rule: the op is inlined before
partitioning; its factors relate nothing (each dim its own factor), as for cond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.autodiff import backward, replay, trace_flat
from spmd.errors import InternalError, ShapeError
from spmd.interpreter import evaluate
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops.common import letters
from spmd.ops.opdef import Factors, Linearity, OpDef, Trait, is_impure
from spmd.passes.cse import cse
from spmd.passes.dce import dce
from spmd.passes.rules import rename_inputs
from spmd.tracing import bind


@dataclass(frozen=True)
class Policy:
    """Which forward values a remat region saves for its backward (the rest is recomputed).

    kind: "nothing" (only the region's inputs), "everything", "dots" (every dot_general),
    "dots_no_batch" (dot_generals without batch dims), "names" (checkpoint_name values in
    `names`), "names_but" (every checkpoint_name value except those in `names`),
    "names_offload" (as "names", and also the `offload` names: saved, but kept in `dst`
    memory (host) between the forward and the backward).
    """

    kind: str = "nothing"
    names: tuple[str, ...] = ()
    offload: tuple[str, ...] = ()
    src: str = "device"
    dst: str = "pinned_host"

    def offloaded(self, op: Op) -> bool:
        return op.name == "checkpoint_name" and op.attrs["label"] in self.offload

    def saveable(self, op: Op) -> bool:
        if self.kind == "everything":
            return True
        if self.kind == "dots":
            return op.name == "dot_general"
        if self.kind == "dots_no_batch":
            return op.name == "dot_general" and not op.attrs["dimension_numbers"][1][0]
        if op.name != "checkpoint_name":
            return False
        if self.kind == "names":
            return op.attrs["label"] in self.names
        if self.kind == "names_offload":
            return op.attrs["label"] in self.names or op.attrs["label"] in self.offload
        return self.kind == "names_but" and op.attrs["label"] not in self.names

    def __repr__(self) -> str:
        offload = f"+offload{list(self.offload)}" if self.offload else ""
        return f"{self.kind}{list(self.names) if self.names else ''}{offload}"


POLICY_KINDS = (
    "nothing",
    "everything",
    "dots",
    "dots_no_batch",
    "names",
    "names_but",
    "names_offload",
)


def _remat_type(
    *operands: TensorType, body: Graph, policy: Policy, recompute: bool
) -> tuple[TensorType, ...]:
    if len(operands) != len(body.params):
        raise ShapeError(f"remat body takes {len(body.params)} values, got {len(operands)}")
    for i, (want, got) in enumerate(zip(body.param_types, operands)):
        if want.shape != got.shape or want.dtype != got.dtype:
            raise ShapeError(f"remat operand {i} has type {got}, its body expects {want}")
    return tuple(body.result_types)


def _remat_ref(
    *args: np.ndarray, body: Graph, policy: Policy, recompute: bool
) -> tuple[np.ndarray, ...]:
    return tuple(evaluate(body, args))


def _remat_factors(*types: TensorType, body: Graph, policy: Policy, recompute: bool) -> Factors:
    names = iter(f"f{i}" for i in range(10**6))
    ins = tuple(tuple(next(names) for _ in t.shape) for t in types)
    outs = tuple(tuple(next(names) for _ in t.shape) for t in body.result_types)
    return Factors(ins, outs)


def _remat_vjp(*_: Any, **__: Any) -> Any:
    """Never called: spmd.autodiff differentiates remat regions itself (it needs the
    residuals saved when the forward was replayed, see forward_and_backward)."""
    raise InternalError("remat's VJP goes through spmd.autodiff (this is a bug in spmd)")


@dataclass(frozen=True)
class Split:
    """forward: the body extended with the saved residuals as extra results; backward:
    (body params, result cotangents, residuals) -> cotangents of the differentiable params."""

    forward: Graph
    backward: Graph
    n_residuals: int
    diff_params: tuple[int, ...]  # indices of body params that get a cotangent
    primals: tuple[int, ...]  # indices of body params the backward reads (its first params)


_SPLITS: dict[tuple[int, Policy], tuple[Graph, Split]] = {}


def split_remat(body: Graph, policy: Policy) -> Split:
    """The region's split, made once per body graph and policy."""
    key = (id(body), policy)
    found = _SPLITS.get(key)
    if found is None or found[0] is not body:
        if len(_SPLITS) > 256:
            _SPLITS.clear()
        found = _SPLITS[key] = (body, _split(body, policy))
    return found[1]


def _split(body: Graph, policy: Policy) -> Split:
    """Trace the region's VJP and cut it where the policy saves forward values."""

    diff_out = [i for i, t in enumerate(body.result_types) if dtypes.is_differentiable(t.dtype)]
    diff_in = tuple(i for i, t in enumerate(body.param_types) if dtypes.is_differentiable(t.dtype))
    n = len(body.params)

    def step(*args: Any) -> list[Any]:
        env = replay(body, args[:n])
        cts: list[Any] = [None] * len(body.results)
        for i, ct in zip(diff_out, args[n:]):
            cts[i] = ct
        param_cts = backward(body, env, cts)
        return [param_cts[i] for i in diff_in]

    graph, captured = trace_flat(
        step, list(body.param_types) + [body.result_types[i] for i in diff_out]
    )
    if captured:
        raise InternalError("a remat body captured outer values (this is a bug in spmd)")
    primal = set(graph.params[:n])
    saved_ops: list[Op] = []
    primal_ops: list[Op] = []
    for op in graph.ops:
        if is_impure(op.name) or not all(v in primal for v in op.inputs):
            continue
        primal.update(op.outputs)
        primal_ops.append(op)
        if policy.saveable(op):
            saved_ops.append(op)
    cut = {id(op) for op in saved_ops}
    candidates = [v for op in saved_ops for v in op.outputs]
    # a saved name is the same value as its input: the backward reads the saved one
    alias = {op.inputs[0]: op.outputs[0] for op in saved_ops if op.name == "checkpoint_name"}
    types = graph.types
    backward_graph = dce(
        graph.replace(
            params=graph.params + tuple(candidates),
            param_types=graph.param_types + tuple(types[v] for v in candidates),
            ops=tuple(rename_inputs(op, alias) for op in graph.ops if id(op) not in cut),
            results=tuple(alias.get(v, v) for v in graph.results),
        )
    )
    used = {v for op in backward_graph.ops for v in op.inputs} | set(backward_graph.results)
    residuals = [v for v in candidates if v in used]
    backward_graph = backward_graph.replace(
        params=graph.params + tuple(residuals),
        param_types=graph.param_types + tuple(types[v] for v in residuals),
    )
    rename = dict(zip(graph.params[:n], body.params))
    copied = tuple(_renamed(op, rename) for op in primal_ops)
    forward = dce(cse(body.replace(ops=body.ops + copied, results=body.results + tuple(residuals))))
    offloaded = {op.outputs[0]: op.attrs["label"] for op in saved_ops if policy.offloaded(op)}
    if offloaded:
        forward, backward_graph = _offload(forward, backward_graph, residuals, offloaded, policy)
    # primals the backward does not read (saved under a name instead) are not passed to it,
    # so a scan need not stack them for its backward
    read = {v for op in backward_graph.ops for v in op.inputs} | set(backward_graph.results)
    primals = tuple(i for i in range(n) if backward_graph.params[i] in read)
    keep = [*primals, *range(n, len(backward_graph.params))]
    backward_graph = backward_graph.replace(
        params=tuple(backward_graph.params[i] for i in keep),
        param_types=tuple(backward_graph.param_types[i] for i in keep),
    )
    return Split(forward, backward_graph, len(residuals), diff_in, primals)


def _offload(
    forward: Graph,
    backward: Graph,
    residuals: list[int],
    labels: dict[int, str],
    policy: Policy,
) -> tuple[Graph, Graph]:
    """Move offloaded residuals to `policy.dst` memory at the end of the forward and back
    to `policy.src` memory at the start of the backward: checkpoint_name ops with a
    `memory` attribute, which inline_remat keeps (the TPU simulator prices the copies)."""
    n_res = len(residuals)
    types = backward.types
    f_results = list(forward.results)
    f_ops = list(forward.ops)
    b_params = list(backward.params)
    b_ops: list[Op] = []
    for i, r in enumerate(residuals):
        if r not in labels:
            continue
        t = types[r]
        fi = len(f_results) - n_res + i
        host = fresh_id()
        attrs = {"label": labels[r]}
        f_ops.append(
            Op(
                "checkpoint_name",
                (f_results[fi],),
                (host,),
                (t,),
                Attrs({**attrs, "memory": policy.dst}),
            )
        )
        f_results[fi] = host
        bi = len(b_params) - n_res + i
        param = b_params[bi]
        b_params[bi] = fresh_id()
        b_ops.append(
            Op(
                "checkpoint_name",
                (b_params[bi],),
                (param,),
                (t,),
                Attrs({**attrs, "memory": policy.src}),
            )
        )
    forward = forward.replace(ops=tuple(f_ops), results=tuple(f_results))
    backward = backward.replace(params=tuple(b_params), ops=tuple(b_ops) + backward.ops)
    return forward, backward


def _renamed(op: Op, rename: dict[int, int]) -> Op:
    inputs = tuple(rename.get(v, v) for v in op.inputs)
    return (
        op if inputs == op.inputs else Op(op.name, inputs, op.outputs, op.types, op.attrs, op.loc)
    )


def replay_remat(op: Op, ins: Sequence[Any]) -> tuple[list[Any], tuple[Any, ...]]:
    """Run a remat op's forward for differentiation: (its outputs, the saved residuals)."""
    split = split_remat(op.attrs["body"], op.attrs["policy"])
    outs = bind("remat", *ins, body=split.forward, policy=op.attrs["policy"], recompute=False)
    k = len(op.outputs)
    return list(outs[:k]), tuple(outs[k:])


def remat_backward(
    op: Op, out_cts: Sequence[Any], primals: Sequence[Any], residuals: Sequence[Any]
) -> list[Any]:
    """Cotangents of a remat op's inputs: a recompute region on (primals, cts, residuals)."""

    body: Graph = op.attrs["body"]
    split = split_remat(body, op.attrs["policy"])
    cts = [
        prim.full(t.shape, 0, t.dtype) if ct is None else ct
        for ct, t in zip(out_cts, body.result_types)
        if dtypes.is_differentiable(t.dtype)
    ]
    outs = bind(
        "remat",
        *[primals[i] for i in split.primals],
        *cts,
        *residuals,
        body=split.backward,
        policy=op.attrs["policy"],
        recompute=True,
    )
    result: list[Any] = [None] * len(primals)
    for i, ct in zip(split.diff_params, outs):
        result[i] = ct
    return result


OPS = [
    OpDef(
        "remat",
        _remat_type,
        _remat_ref,
        _remat_vjp,
        _remat_factors,
        multi_output=True,
        doc="A rematerialised region (jax.checkpoint): body graph, saving policy.",
        traits=Trait.CONTROL,
        residual_vjp=(replay_remat, remat_backward),
    ),
    OpDef(
        "checkpoint_name",
        lambda x, *, label, memory="": x,
        lambda x, *, label, memory="": x,
        lambda ct, x, *, out, label, memory="": ct,
        lambda x, *, label, memory="": Factors.parse(f"{letters(x.ndim)}->{letters(x.ndim)}"),
        linear=Linearity.JOINT,
        traits=Trait.ANNOTATION,
        doc="Identity that names a value for save_only_these_names policies; with `memory` "
        "(an offloaded residual) it moves the value to that memory (host or device).",
    ),
]
