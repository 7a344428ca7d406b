"""Every registered op has every field of its registry entry (infer, reference, vjp marker,
factors that fit a sample input) and a row in every backend's lowering table."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from op_lists import elementwise

from spmd import dtypes, lax
from spmd.api import JitFunction
from spmd.ir.graph import Graph, Op, subgraphs
from spmd.ir.types import TensorType
from spmd.ops import NONDIFF, REGISTRY, ZERO_GRAD, Factors, Linearity, Trait
from spmd.ops.attrs import with_leading_axis

ROOT = Path(__file__).resolve().parent.parent
F23, F3, I32, B23 = (
    TensorType((2, 3), "float32"),
    TensorType((3,), "float32"),
    TensorType((), "int32"),
    TensorType((2, 3), "bool"),
)
INT23 = TensorType((2, 3), "int32")
GROUP = {"axes": ("data",), "group_size": 2}
Sample = tuple[tuple[TensorType, ...], dict[str, Any]]


def sharding() -> Any:
    from spmd.sharding import ShardingAttr

    return ShardingAttr(("data",), (2,), (("data",), ()))


SAMPLES: dict[str, Callable[[], Sample]] = {
    # elementwise ops: the first operand list their type rule accepts
    **{name: (lambda: ((F23,), {})) for name in elementwise(1, "float32")},
    **{
        name: (lambda: ((B23,), {}))
        for name in elementwise(1, "bool")
        if name not in elementwise(1, "float32")
    },
    **{name: (lambda: ((F23, F23), {})) for name in elementwise(2, "float32")},
    **{
        name: (lambda: ((INT23, INT23), {}))
        for name in elementwise(2, "int32")
        if name not in elementwise(2, "float32")
    },
    **{name: (lambda: ((B23, F23, F23), {})) for name in elementwise(3, "bool")},
    "convert_element_type": lambda: ((F23,), {"new_dtype": "int32", "weak": False}),
    "constant": lambda: ((), {"value": np.ones((2, 3), np.float32), "weak": False}),
    "iota": lambda: ((), {"dtype": "int32", "shape": (2, 3), "dimension": 1}),
    "broadcast_in_dim": lambda: ((F3,), {"shape": (2, 3), "broadcast_dimensions": (1,)}),
    "reshape": lambda: ((F23,), {"new_sizes": (3, 2)}),
    "transpose": lambda: ((F23,), {"permutation": (1, 0)}),
    "slice": lambda: (
        (F23,),
        {"start_indices": (0, 1), "limit_indices": (2, 3), "strides": (1, 1)},
    ),
    "pad": lambda: ((F23, TensorType((), "float32")), {"padding_config": ((1, 0, 0), (0, 1, 1))}),
    "concatenate": lambda: ((F23, F23), {"dimension": 0}),
    "rev": lambda: ((F23,), {"dimensions": (0,)}),
    "sharding_constraint": lambda: ((F23,), {"sharding": sharding()}),
    "reduce": lambda: ((F23,), {"kind": "sum", "axes": (1,)}),
    "argmax": lambda: ((F23,), {"axis": 1, "index_dtype": "int32"}),
    "argmin": lambda: ((F23,), {"axis": 0, "index_dtype": "int32"}),
    "cumsum": lambda: ((F23,), {"axis": 1, "reverse": False}),
    "sort": lambda: ((F23,), {"dimension": 1}),
    "argsort": lambda: ((F23,), {"dimension": 0}),
    "dot_general": lambda: (
        (F23, TensorType((3, 4), "float32")),
        {"dimension_numbers": (((1,), (0,)), ((), ())), "preferred_element_type": None},
    ),
    "dynamic_slice": lambda: ((F23, I32, I32), {"slice_sizes": (1, 2)}),
    "dynamic_update_slice": lambda: ((F23, TensorType((1, 2), "float32"), I32, I32), {}),
    "gather": lambda: ((F23, TensorType((4,), "int32")), {"axis": 0}),
    "scatter_add": lambda: (
        (F23, TensorType((4,), "int32"), TensorType((4, 3), "float32")),
        {"axis": 0},
    ),
    "all_reduce": lambda: ((F23,), {**GROUP, "kind": "sum"}),
    "all_gather": lambda: ((F23,), {**GROUP, "dim": 0}),
    "reduce_scatter": lambda: (
        (TensorType((4, 3), "float32"),),
        {**GROUP, "dim": 0, "kind": "sum"},
    ),
    "all_to_all": lambda: (
        (TensorType((4, 2), "float32"),),
        {**GROUP, "split_dim": 0, "concat_dim": 1},
    ),
    "collective_permute": lambda: ((F23,), {**GROUP, "pairs": ((0, 1), (1, 0))}),
    "axis_index": lambda: ((), dict(GROUP)),
}


def traced_sample(name: str, fn: Callable[..., Any], *args: Any) -> Callable[[], Sample]:
    """A sample taken from the first `name` op of a traced program (ops with sub-graphs)."""

    def sample() -> Sample:
        graph: Graph = JitFunction(fn)._trace(args, {})[0]
        op = next(op for op in graph.ops if op.name == name)
        return tuple(graph.types[v] for v in op.inputs), dict(op.attrs)

    return sample


X = np.ones((4, 3), np.float32)


def _while(x: Any) -> Any:
    return lax.while_loop(
        lambda c: lax.lt(c[0], 3),
        lambda c: (lax.add(c[0], 1), c[1]),
        (lax.constant(np.int32(0)), x),
    )


def _shard_map(x: Any) -> Any:
    import spmd
    from spmd.shard_map import shard_map

    mesh = spmd.make_mesh((2,), ("data",))
    return shard_map(lambda b: lax.psum(b, "data"), mesh, spmd.P("data"), spmd.P())(x)


SAMPLES.update(
    {
        "scan": traced_sample(
            "scan",
            lambda x: lax.scan(lambda c, r: (lax.add(c, r), r), lax.reduce_sum(x, (0,)), x),
            X,
        ),
        "cond": traced_sample(
            "cond",
            lambda x: lax.cond(lax.gt(lax.reduce_sum(x, (0, 1)), 0.0), lax.exp, lax.neg, x),
            X,
        ),
        "while_loop": traced_sample("while_loop", _while, X),
        "shard_map": traced_sample("shard_map", _shard_map, X),
        "remat": traced_sample("remat", lambda x: __import__("spmd").remat(lax.exp)(x), X),
    }
)
Q, KV = TensorType((2, 5, 4, 8), "float32"), TensorType((2, 6, 2, 8), "float32")
ATTENTION = {"scale": 0.35, "is_causal": True, "has_bias": True, "has_mask": False}
SAMPLES.update(
    {
        "checkpoint_name": lambda: ((F23,), {"label": "h"}),
        "dot_product_attention": lambda: (
            (Q, KV, KV, TensorType((1, 4, 5, 6), "float32")),
            ATTENTION,
        ),
        "dot_product_attention_bwd": lambda: (
            (
                Q,
                KV,
                KV,
                Q,
                TensorType((2, 4, 5), "float32"),
                Q,
                TensorType((2, 1, 5, 6), "float32"),
            ),
            ATTENTION,
        ),
    }
)
# Ops being written concurrently: a missing sample is not a failure for them (yet).
OWNED_ELSEWHERE = {
    "cond",
    "scan",
    "while_loop",
    "shard_map",
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "collective_permute",
    "axis_index",
    "gather",
    "scatter_add",
    "dynamic_slice",
    "dynamic_update_slice",
}


def test_registry_is_not_empty_and_names_match_entries():
    assert len(REGISTRY) > 40
    assert all(name == opdef.name for name, opdef in REGISTRY.items())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_has_infer_reference_and_vjp(name):
    opdef = REGISTRY[name]
    assert callable(opdef.infer) and callable(opdef.reference) and callable(opdef.factors)
    assert callable(opdef.vjp) or opdef.vjp is NONDIFF or opdef.vjp is ZERO_GRAD, opdef.vjp


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_factors_fit_a_sample_input(name):
    if name not in SAMPLES:
        if name in OWNED_ELSEWHERE:
            pytest.skip(f"{name}: no sample yet (op being written elsewhere)")
        pytest.fail(f"add a sample input for {name!r} to SAMPLES in {Path(__file__).name}")
    try:
        in_types, attrs = SAMPLES[name]()
    except Exception as err:
        if name in OWNED_ELSEWHERE:
            pytest.skip(f"{name}: sample does not trace yet: {err}")
        raise
    opdef = REGISTRY[name]
    out = opdef.infer(*in_types, **attrs)
    out_types = out if isinstance(out, tuple) else (out,)
    assert all(isinstance(t, TensorType) for t in out_types)
    assert opdef.multi_output or len(out_types) == 1
    factors = opdef.factors(*in_types, **attrs)
    assert isinstance(factors, Factors)
    assert len(factors.operands) == len(in_types), str(factors)
    assert [len(d) for d in factors.operands] == [t.ndim for t in in_types], str(factors)
    assert len(factors.results) == len(out_types), str(factors)
    assert [len(d) for d in factors.results] == [t.ndim for t in out_types], str(factors)
    named = {f for dims in factors.operands + factors.results for f in dims if f}
    assert factors.reduce <= named and factors.blocked <= named, str(factors)


def backend_tables() -> list[str]:
    """The packages of the backend registry's kinds (backends/common is shared code, not a
    backend); each must have a lower.py table."""
    from backends.registry import REGISTRY as BACKENDS

    return sorted({target.split(":")[0].split(".")[1] for target in BACKENDS.values()})


@pytest.mark.parametrize("backend", backend_tables())
def test_every_op_has_a_lowering_on_every_backend(backend):
    table = importlib.import_module(f"backends.{backend}.lower").LOWERINGS
    missing = sorted(set(REGISTRY) - set(table))
    core = [name for name in missing if name not in OWNED_ELSEWHERE]
    assert core == [], f"backends/{backend}/lower.py LOWERINGS lacks rows for {core}"
    stale = sorted(set(table) - set(REGISTRY))
    assert stale == [], f"backends/{backend}/lower.py has rows for ops that do not exist: {stale}"
    if missing:
        pytest.xfail(f"backends/{backend}/lower.py lacks rows for ops written elsewhere: {missing}")


def _value(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    """Random operand; integer ones (indices, starts) are 0 or 1, in range for any sample."""
    if dtypes.is_float(t.dtype):
        return rng.standard_normal(t.shape).astype(dtypes.to_numpy(t.dtype))
    if t.dtype == "bool":
        return rng.random(t.shape) < 0.5
    return rng.integers(0, 2, t.shape).astype(dtypes.to_numpy(t.dtype))


COMBINE = {"sum": np.add, "max": np.maximum, "min": np.minimum}


def _linear_groups(linear: Linearity, in_types: tuple[TensorType, ...]) -> list[list[int]]:
    """The operands that OpDef.linear says may be partial together, one list per case."""
    floats = [i for i, t in enumerate(in_types) if dtypes.is_float(t.dtype)]
    return {
        Linearity.JOINT: [floats],
        Linearity.EACH: [[i] for i in floats],
        Linearity.FIRST: [[0]],
        Linearity.BRANCHES: [[1, 2]],
        Linearity.SAME_REDUCTION: [[0]],
    }[linear]


@pytest.mark.parametrize(
    "name", sorted(n for n, d in REGISTRY.items() if d.linear is not Linearity.NONE)
)
def test_linearity_holds_on_the_reference(name):
    """What OpDef.linear claims (the partitioner keeps a pending reduction through the op)
    holds for the numpy reference: f(a (+) b) = f(a) (+) f(b) in the operands it names."""
    opdef = REGISTRY[name]
    in_types, attrs = SAMPLES[name]()
    out = opdef.infer(*in_types, **attrs)
    if any(t.dtype != in_types[0].dtype for t in (out if isinstance(out, tuple) else (out,))):
        pytest.skip("a dtype change resolves a pending sum first (the partitioner's rule)")
    kinds = ["sum", "max", "min"] if opdef.linear is Linearity.SAME_REDUCTION else ["sum"]
    rng = np.random.default_rng(0)
    for kind in kinds:
        run_attrs = {**attrs, "kind": kind} if "kind" in attrs else attrs
        for group in _linear_groups(opdef.linear, in_types):
            a = [_value(t, rng) for t in in_types]
            b, both = list(a), list(a)
            for i in group:
                b[i] = _value(in_types[i], rng)
                both[i] = COMBINE[kind](a[i], b[i])
            want = COMBINE[kind](opdef.reference(*a, **run_attrs), opdef.reference(*b, **run_attrs))
            np.testing.assert_allclose(
                opdef.reference(*both, **run_attrs),
                want,
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{name} {kind} operands {group}",
            )


def test_traits_match_what_the_op_does():
    """ELEMENTWISE ops map every factor to itself; COLLECTIVE and PER_DEVICE ones have a
    group oracle; CONTROL ones hold sub-graphs; attr_kinds name attributes the op has."""
    for name, opdef in REGISTRY.items():
        in_types, attrs = SAMPLES[name]()
        factors = opdef.factors(*in_types, **attrs)
        if opdef.has(Trait.ELEMENTWISE):
            assert all(d == factors.results[0] for d in factors.operands), name
            assert not factors.reduce and not factors.blocked, name
        if opdef.has(Trait.COLLECTIVE):
            assert opdef.has(Trait.PER_DEVICE), name
        if opdef.has(Trait.PER_DEVICE):
            assert "group_reference" in opdef.extra, name
        op = Op(name, (), (), (), attrs)
        assert bool(subgraphs(op)) == opdef.has(Trait.CONTROL), name
        assert set(opdef.attr_kinds) <= set(attrs) | {"weak"}, (name, opdef.attr_kinds)


@pytest.mark.parametrize(
    "table", ["backends.cpu.mathlib:SCALAR", "backends.gpu.cuda_math:EXPRESSIONS"]
)
def test_every_elementwise_op_has_scalar_code(table):
    """A new elementwise op needs exactly one row in each backend's scalar table."""
    module, _, attr = table.partition(":")
    rows = getattr(importlib.import_module(module), attr)
    ops = {n for n, d in REGISTRY.items() if d.has(Trait.ELEMENTWISE)}
    assert sorted(ops - set(rows)) == [], f"{table} lacks rows"
    assert sorted(set(rows) - ops) == [], f"{table} has rows for ops that are not elementwise"


@pytest.mark.parametrize(
    "name", sorted(n for n, d in REGISTRY.items() if d.shared_operands is not None)
)
def test_with_leading_axis_runs_every_instance_at_once(name):
    """Device batching's rule, from attr_kinds: the op on operands stacked over n instances
    (shared operands once) equals the op on each instance, stacked (numpy references)."""
    opdef = REGISTRY[name]
    in_types, attrs = SAMPLES[name]()
    n, shared = 3, opdef.shared_operands
    rng = np.random.default_rng(1)
    per = [[_value(t, rng) for t in in_types] for _ in range(n)]
    for k in range(1, n):
        for i in shared:
            per[k][i] = per[0][i]
    stacked = [
        per[0][i] if i in shared else np.stack([p[i] for p in per]) for i in range(len(in_types))
    ]
    got = opdef.reference(*stacked, **with_leading_axis(opdef, dict(attrs), n))
    want = np.stack([opdef.reference(*p, **attrs) for p in per])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
