"""Careless-user fuzzing of the public API: bad sizes, axes, indices, argnums, dtypes, specs
and meshes. Every call either works or raises a spmd.errors exception that names the test's
own line; any other exception (TypeError, numpy's ValueError, IndexError...) fails."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, lax
from spmd.errors import ArgumentError, ConfigError, MeshError, ShapeError, SpmdError

# Values a careless user passes where a size, an axis or an index belongs.
BAD_NUMBERS = st.one_of(
    st.integers(-(10**20), -1),
    st.integers(2**41, 10**20),
    st.sampled_from([2.5, -0.5, 1e30]),
    st.just(float("nan")),
    st.just(float("inf")),
    st.just("3"),
    st.just(None),
    st.just(True),
    st.just((2, -1)),
    st.just([1.5]),
    st.just(object()),
)
ANY_NUMBER = st.one_of(BAD_NUMBERS, st.integers(-4, 4))
BAD_SPECS = st.one_of(
    st.just(P(1)),
    st.just(P("nope")),
    st.just(P("x", "x")),
    st.just(P(None, None, None, "x")),
    st.just("x"),
    st.just(3),
    st.just(P(("x", 2))),
    st.just(P(unreduced={"q"})),
)

X = np.arange(12.0, dtype=np.float32).reshape(3, 4)
MESH = spmd.make_mesh((2, 4), ("x", "y"))


def _calls() -> dict[str, Callable[[Any], Any]]:
    """One call per public entry point, with the fuzzed value in one argument."""
    return {
        "zeros": lambda v: snp.zeros(v),
        "ones_shape": lambda v: snp.ones((2, v)),
        "full": lambda v: snp.full(v, 1.0),
        "eye": lambda v: snp.eye(v),
        "eye_m": lambda v: snp.eye(2, v),
        "arange": lambda v: snp.arange(v),
        "linspace": lambda v: snp.linspace(0, 1, v),
        "repeat": lambda v: snp.repeat(X, v),
        "tile": lambda v: snp.tile(X, v),
        "reshape": lambda v: snp.reshape(X, (v, -1)),
        "broadcast_to": lambda v: snp.broadcast_to(X, (v, 3, 4)),
        "sum_axis": lambda v: snp.sum(X, axis=v),
        "mean_axis": lambda v: snp.mean(X, axis=v),
        "argmax_axis": lambda v: snp.argmax(X, axis=v),
        "cumsum_axis": lambda v: snp.cumsum(X, axis=v),
        "concat_axis": lambda v: snp.concatenate([X, X], axis=v),
        "stack_axis": lambda v: snp.stack([X, X], axis=v),
        "expand_dims": lambda v: snp.expand_dims(X, v),
        "squeeze": lambda v: snp.squeeze(X, v),
        "transpose": lambda v: snp.transpose(X, (v, 0)),
        "swapaxes": lambda v: snp.swapaxes(X, v, 0),
        "moveaxis": lambda v: snp.moveaxis(X, v, 0),
        "split": lambda v: snp.split(X, v),
        "roll": lambda v: snp.roll(X, 1, axis=v),
        "flip": lambda v: snp.flip(X, v),
        "take": lambda v: snp.take(X, v),
        "take_axis": lambda v: snp.take(X, 0, axis=v),
        "getitem": lambda v: snp.asarray(X)[v],
        "dynamic_slice_in_dim": lambda v: lax.dynamic_slice_in_dim(X, 0, v),
        "astype": lambda v: snp.asarray(X).astype(v),
        "zeros_dtype": lambda v: snp.zeros(3, dtype=v),
        "random_normal": lambda v: spmd.random.normal(spmd.random.key(0), (v,)),
        "random_split": lambda v: spmd.random.split(spmd.random.key(0), v),
        "randint": lambda v: spmd.random.randint(spmd.random.key(0), (2,), 0, v),
        "make_mesh": lambda v: spmd.make_mesh((v, 2)),
        "make_mesh_names": lambda v: spmd.make_mesh((2,), v),
        "shape_dtype_struct": lambda v: spmd.ShapeDtypeStruct((v, 4), "float32"),
        "jit_static": lambda v: spmd.jit(lambda a: a, static_argnums=v)(X),
        "jit_donate": lambda v: spmd.jit(lambda a: a, donate_argnums=v)(X),
        "jit_fun": lambda v: spmd.jit(v),
        "grad_argnums": lambda v: spmd.grad(lambda a: snp.sum(a), argnums=v)(X),
        "vmap_in_axes": lambda v: spmd.vmap(lambda a: a, in_axes=v)(X),
        "vmap_out_axes": lambda v: spmd.vmap(lambda a: a, out_axes=v)(X),
        "lax_reduce": lambda v: lax.reduce_sum(X, (v,)),
        "lax_broadcast_in_dim": lambda v: lax.broadcast_in_dim(X, (3, v), (0, 1)),
        "lax_iota": lambda v: lax.iota("int32", (v,)),
        "lax_slice": lambda v: lax.slice(X, (0, 0), (v, 4)),
        "lax_pad": lambda v: lax.pad(X, 0.0, [(v, 0, 0), (0, 0, 0)]),
        "axis_types": lambda v: spmd.make_mesh((2,), ("a",), v),
    }


def _spec_calls() -> dict[str, Callable[[Any], Any]]:
    return {
        "named_sharding": lambda s: NamedSharding(MESH, s),
        "device_put": lambda s: spmd.device_put(np.ones((8, 8)), NamedSharding(MESH, s)),
        "jit_in_shardings": lambda s: spmd.jit(lambda a: a, in_shardings=s)(np.ones((8, 8))),
        "shard_map_in": lambda s: spmd.shard_map(lambda a: a, mesh=MESH, in_specs=s, out_specs=P())(
            np.ones((8, 8))
        ),
        "shard_map_out": lambda s: spmd.shard_map(
            lambda a: a, mesh=MESH, in_specs=P(), out_specs=s
        )(np.ones((8, 8))),
        "reshard": lambda s: spmd.reshard(np.ones((8, 8)), NamedSharding(MESH, s)),
        "with_sharding_constraint": lambda s: spmd.jit(
            lambda a: spmd.with_sharding_constraint(a, NamedSharding(MESH, s))
        )(np.ones((8, 8))),
    }


def _run(call: Callable[[Any], Any], value: Any) -> None:
    try:
        out = call(value)
        for leaf in spmd.tree_leaves(out):
            np.asarray(leaf)  # results must be readable, not fail later
    except SpmdError as err:
        assert "test_fuzz_api.py" in str(err) or err.loc == "environment", (
            f"error does not name the user's line:\n{err}"
        )
    # anything else propagates and fails the test


FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("name", sorted(_calls()))
@FUZZ
@given(value=ANY_NUMBER)
def test_bad_numbers_raise_spmd_errors(name, value):
    _run(_calls()[name], value)


@pytest.mark.parametrize("name", sorted(_spec_calls()))
@FUZZ
@given(spec=BAD_SPECS)
def test_bad_specs_raise_spmd_errors(name, spec):
    _run(_spec_calls()[name], spec)


@pytest.mark.parametrize(
    "var, value",
    [
        ("SPMD_BACKEND", "gpu-fast"),
        ("SPMD_LOCAL_MODE", "warp"),
        ("SPMD_CPU_THREADS", "-3"),
        ("SPMD_CPU_THREADS", "many"),
        ("SPMD_NUM_DEVICES", "eight"),
        ("SPMD_VERIFY", "yes please"),
    ],
)
def test_unknown_environment_values_are_refused_before_any_work(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var) as err:
        spmd.jit(lambda a: a + 1)(np.ones(3))
    assert "hint" in str(err.value)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: spmd.jit(lambda a: a, static_argnums=5), ArgumentError),
        (lambda: spmd.jit(lambda a, b: a, donate_argnums=(0, -3)), ArgumentError),
        (lambda: spmd.jit(42), ArgumentError),
        (lambda: spmd.grad(lambda a: a, argnums=1), ArgumentError),
        (lambda: spmd.vmap("f"), ArgumentError),
        (lambda: spmd.make_mesh((2.5, 4)), MeshError),
        (lambda: spmd.ShapeDtypeStruct((2.5, 4), "float32"), ShapeError),
        (lambda: spmd.ShapeDtypeStruct((-1, 4), "float32"), ShapeError),
        (lambda: snp.eye(-2), ShapeError),
        (lambda: snp.full((2, -3), 1.0), ShapeError),
        (lambda: snp.repeat(X, -1), ShapeError),
    ],
)
def test_each_listed_mistake_gets_its_class_at_the_door(call, error):
    with pytest.raises(error) as err:
        call()
    assert "test_fuzz_api.py" in str(err.value) and "hint" in str(err.value)


def test_static_argnums_beyond_a_varargs_call_is_refused():
    f = spmd.jit(lambda *a: a[0], static_argnums=3)
    with pytest.raises(ArgumentError, match="static_argnums"):
        f(X, 1)


def test_has_aux_needs_a_pair():
    with pytest.raises(SpmdError, match="has_aux") as err:
        spmd.value_and_grad(lambda a: snp.sum(a), has_aux=True)(X)
    assert "test_fuzz_api.py" in str(err.value)


def test_take_out_of_range_fills_as_jax_does():
    got = np.asarray(snp.take(np.arange(3.0), np.array([0, 999, -1, -4])))
    np.testing.assert_array_equal(got[[0, 2]], [0.0, 2.0])
    assert math.isnan(got[1]) and math.isnan(got[3])
    ints = np.asarray(snp.take(np.arange(3, dtype=np.int32), 999))
    assert ints == np.iinfo(np.int32).min
