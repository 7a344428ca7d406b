"""JAX's current API on spmd: mesh context, axis types, sharding in types, shard_map's
decorator form and varying-axes checks, inspection, and the numpy names users reach for.
Values are checked against numpy; shardings against what JAX documents."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import AxisType, NamedSharding, P, lax
from spmd.errors import ShardingError, SpmdError
from tests.core.oracle import assert_close


@pytest.fixture
def mesh():
    return spmd.make_mesh((2, 4), ("x", "y"))


def spec_of(a):
    return a.sharding.spec


def test_set_mesh_is_a_setter_and_a_context_manager(mesh):
    assert spmd.get_abstract_mesh().empty
    with spmd.set_mesh(mesh):
        am = spmd.get_abstract_mesh()
        assert am.axis_names == ("x", "y") and am.axis_sizes == (2, 4)
        assert am.axis_types == (AxisType.Explicit, AxisType.Explicit)
    assert spmd.get_abstract_mesh().empty
    spmd.set_mesh(mesh)
    try:
        assert spmd.get_abstract_mesh().shape == {"x": 2, "y": 4}
        a = spmd.device_put(np.arange(8.0), P("x"))  # bare P: the set mesh
        assert a.sharding == NamedSharding(mesh, P("x"))
    finally:
        spmd.set_mesh(None)
    assert spmd.get_abstract_mesh().empty


def test_axis_types_positional_and_defaults():
    m = spmd.make_mesh((2, 4), ("a", "b"), (AxisType.Auto, AxisType.Explicit))
    assert m.axis_types == (AxisType.Auto, AxisType.Explicit)
    assert m.abstract_mesh.explicit_axes == ("b",) and m.abstract_mesh.auto_axes == ("a",)
    plain = spmd.Mesh(np.array(spmd.devices()[:2]), ("a",))
    assert plain.axis_types == (AxisType.Auto,)  # Mesh(...) is Auto, make_mesh Explicit
    with pytest.raises(spmd.errors.MeshError):
        spmd.make_mesh((2, 4), ("a", "b"), (AxisType.Auto,))


def test_typeof_reads_shardings_outside_and_inside_jit(mesh):
    x = spmd.device_put(
        np.arange(16.0, dtype=np.float32).reshape(4, 4), NamedSharding(mesh, P("x", "y"))
    )
    t = spmd.typeof(x)
    assert (t.shape, t.dtype, str(t)) == ((4, 4), np.float32, "float32[4@x,4@y]")
    seen = {}

    @spmd.jit
    def f(v):
        seen["v"] = str(spmd.typeof(v))
        seen["twice"] = str(spmd.typeof(v * 2))
        seen["sum0"] = str(spmd.typeof(v.sum(0)))
        seen["t"] = str(spmd.typeof(v.T))
        return v

    f(x)
    assert seen == {
        "v": "float32[4@x,4@y]",
        "twice": "float32[4@x,4@y]",
        "sum0": "float32[4@y]",
        "t": "float32[4@y,4@x]",
    }  # JAX's answers
    assert str(spmd.typeof(np.ones(3, np.int32))) == "int32[3]"


def test_reshard_inside_and_outside_jit(mesh):
    x = np.arange(32.0).reshape(4, 8)
    with spmd.set_mesh(mesh):
        a = spmd.reshard(x, P("x", "y"))
        assert spec_of(a) == P("x", "y")
        b = spmd.reshard(a, P())
        assert spec_of(b) == P()
        c = spmd.jit(lambda v: spmd.reshard(v * 2, P(None, "y")))(a)
        assert spec_of(c) == P(None, "y")
        np.testing.assert_array_equal(np.asarray(c), 2 * x)


def test_auto_and_explicit_axes_switch_axis_types(mesh):
    x = np.arange(16.0).reshape(4, 4)
    with spmd.set_mesh(mesh):
        seen = []

        @spmd.sharding.auto_axes(out_sharding=P("x", None))
        def g(v):
            seen.append(spmd.get_abstract_mesh().axis_types)
            return v + 1

        out = g(x)
        assert seen == [(AxisType.Auto, AxisType.Auto)]
        assert spec_of(out) == P("x", None)
        np.testing.assert_array_equal(np.asarray(out), x + 1)
        back = spmd.explicit_axes(
            lambda v: (spmd.get_abstract_mesh().axis_types, v), axes="x", in_sharding=P("x")
        )
        with spmd.set_mesh(mesh.with_axis_types((AxisType.Auto, AxisType.Auto))):
            types, v = back(x)
        assert types == (AxisType.Explicit, AxisType.Auto) and spec_of(v) == P("x")


def test_out_sharding_on_creation_and_contraction(mesh):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 4)).astype(np.float32)
    b = rng.standard_normal((4, 8)).astype(np.float32)
    with spmd.set_mesh(mesh):
        d = snp.dot(a, b, out_sharding=P("x", "y"))
        e = snp.einsum("ij,jk->ik", a, b, out_sharding=P(None, "y"))
        n = spmd.random.normal(spmd.random.key(1), (8, 4), out_sharding=P("x", "y"))
        r = snp.arange(8, out_sharding=P("y"))
        z = snp.zeros((8,), device=NamedSharding(mesh, P("x")))
        one = snp.ones(3, device=spmd.devices()[3])
        inside = spmd.jit(lambda u, v: snp.dot(u, v, out_sharding=P("x", None)))(a, b)
    np.testing.assert_allclose(np.asarray(d), a @ b, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(e), a @ b, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(inside), a @ b, rtol=1e-5)
    assert (spec_of(d), spec_of(e), spec_of(n), spec_of(r), spec_of(z)) == (
        P("x", "y"),
        P(None, "y"),
        P("x", "y"),
        P("y"),
        P("x"),
    )
    np.testing.assert_array_equal(
        np.asarray(n), np.asarray(spmd.random.normal(spmd.random.key(1), (8, 4)))
    )
    assert one.devices() == {spmd.devices()[3]} and spec_of(inside) == P("x")


def test_unreduced_and_reduced_specs(mesh):
    spec = P("x", unreduced={"y"})
    assert repr(spec) == "P('x', unreduced={'y'})" and spec != P("x") and P("x") == ("x",)
    assert P(None, reduced="x").reduced == frozenset({"x"})
    with pytest.raises(ShardingError):
        P(unreduced={1})
    with pytest.raises(ShardingError):
        NamedSharding(mesh, P(unreduced={"z"}))
    a = np.arange(32.0, dtype=np.float32).reshape(4, 8)
    with spmd.set_mesh(mesh):
        partial = spmd.jit(lambda u: snp.dot(u, u.T, out_sharding=P(None, None, unreduced={"y"})))
        out = spmd.reshard(partial(spmd.reshard(a, P(None, "y"))), P())
    np.testing.assert_allclose(np.asarray(out), a @ a.T, rtol=1e-6)  # the summed value


def test_shard_map_decorator_with_set_mesh_lays_results_out_by_out_specs(mesh):
    x = np.arange(16.0, dtype=np.float32)
    with spmd.set_mesh(mesh):

        @spmd.shard_map(in_specs=P("x"), out_specs=P("x"))
        def double(block):
            return block * 2

        @spmd.shard_map(in_specs=P(("x", "y")), out_specs=P())
        def total(block):
            return lax.psum(block.sum(keepdims=True), ("x", "y"))

        d, t = double(x), total(x)
        inside = spmd.jit(double)(x)
    np.testing.assert_array_equal(np.asarray(d), 2 * x)
    np.testing.assert_array_equal(np.asarray(t), [x.sum()])
    assert spec_of(d) == P("x") and spec_of(t) == P() and spec_of(inside) == P("x")
    assert len(d.addressable_shards) == 8 and d.addressable_shards[2].data.shape == (8,)


def test_out_specs_that_need_unprovable_replication_are_refused(mesh):
    f = spmd.shard_map(lambda b: b * 2, mesh=mesh, in_specs=P("x"), out_specs=P())
    with pytest.raises(ShardingError, match="can't be statically inferred") as err:
        f(np.arange(8.0))
    assert "test_jax_api.py" in str(err.value) and "psum" in str(err.value)
    loose = spmd.shard_map(
        lambda b: b * 2, mesh=mesh, in_specs=P("x"), out_specs=P(), check_vma=False
    )
    np.testing.assert_array_equal(np.asarray(loose(np.arange(8.0))), [0.0, 2, 4, 6])
    # psum'd and axis-free values are replicated: accepted
    ok = spmd.shard_map(
        lambda b: (lax.psum(b, "x"), 3.0 * snp.ones(2)), mesh=mesh, in_specs=P("x"), out_specs=P()
    )
    s, c = ok(np.arange(8.0))
    # all_gather's result counts as varying (JAX's rule): refused under P()
    gather = spmd.shard_map(
        lambda b: lax.all_gather(b, "x", tiled=True), mesh=mesh, in_specs=P("x"), out_specs=P()
    )
    with pytest.raises(ShardingError, match="statically inferred"):
        gather(np.arange(8.0))
    np.testing.assert_array_equal(np.asarray(s), np.arange(4.0) + np.arange(4.0, 8.0))
    np.testing.assert_array_equal(np.asarray(c), [3.0, 3.0])


def test_scan_carry_that_starts_replicated_and_becomes_varying_is_refused(mesh):
    x = np.arange(8.0, dtype=np.float32)

    def body(c, xi):
        return c + xi, None

    bad = spmd.shard_map(
        lambda v: lax.scan(body, 0.0, v)[0][None], mesh=mesh, in_specs=P("x"), out_specs=P("x")
    )
    with pytest.raises(ShardingError, match="carry") as err:
        bad(x)
    assert "pvary" in str(err.value)
    good = spmd.shard_map(
        lambda v: lax.scan(body, lax.pvary(0.0, "x"), v)[0][None],
        mesh=mesh,
        in_specs=P("x"),
        out_specs=P("x"),
    )
    np.testing.assert_array_equal(np.asarray(good(x)), [x[:4].sum(), x[4:].sum()])
    cast = spmd.shard_map(
        lambda v: lax.scan(body, lax.pcast(0.0, "x", to="varying"), v)[0][None],
        mesh=mesh,
        in_specs=P("x"),
        out_specs=P("x"),
    )
    np.testing.assert_array_equal(np.asarray(cast(x)), [x[:4].sum(), x[4:].sum()])
    with pytest.raises(ShardingError):
        lax.pvary(1.0, "x")  # outside shard_map there is no axis to vary over


def test_make_jaxpr_and_jit_trace():
    jaxpr = spmd.make_jaxpr(lambda x: snp.sin(x) * 2)(np.ones(3, np.float32))
    assert [e.name for e in jaxpr.eqns] == ["sin", "constant", "mul"] or "sin" in str(jaxpr)
    assert [t.shape for t in jaxpr.in_avals] == [(3,)]
    traced = spmd.jit(lambda x, y: (x + y, x * y)).trace(np.ones(2, np.float32), 2.0)
    assert "add" in str(traced.jaxpr) and traced.fun_name == "<lambda>"
    outs = traced.out_info
    assert [o.shape for o in outs] == [(2,), (2,)] and outs[0].dtype == "float32"
    assert "add" in traced.lower().as_text()


def test_visualize_array_sharding_prints_the_device_grid(mesh, capsys):
    x = spmd.device_put(np.zeros((4, 8)), NamedSharding(mesh, P("x", "y")))
    spmd.debug.visualize_array_sharding(x)
    text = capsys.readouterr().out
    assert "dev 0" in text and "dev 7" in text and text.count("|") == 10
    got = []
    spmd.debug.inspect_array_sharding(x, callback=got.append)
    assert got == [x.sharding]


def test_logsumexp_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)) * 50
    want = np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1)
    assert_close(spmd.scipy.special.logsumexp(a, axis=1), want)  # tolerance of its dtype
    assert_close(spmd.scipy.special.logsumexp(a, axis=1, keepdims=True), want[:, None])
    b = np.array([1.0, -2.0, 0.5])
    v = np.array([0.0, 1.0, 2.0])
    out, sign = spmd.scipy.special.logsumexp(v, b=b, return_sign=True)
    s = (b * np.exp(v)).sum()
    assert_close(out, np.log(abs(s)))
    assert float(sign) == np.sign(s)
    assert float(spmd.scipy.special.logsumexp(np.array([-np.inf, -np.inf]))) == -np.inf
    g = spmd.grad(lambda t: spmd.scipy.special.logsumexp(t))(np.array([1.0, 2.0, 3.0]))
    e = np.exp([1.0, 2.0, 3.0])
    assert_close(g, e / e.sum())


def test_dynamic_slice_in_dim_clamps_like_jax():
    x = np.arange(20).reshape(4, 5)
    np.testing.assert_array_equal(np.asarray(lax.dynamic_slice_in_dim(x, 1, 2, axis=1)), x[:, 1:3])
    np.testing.assert_array_equal(np.asarray(lax.dynamic_slice_in_dim(x, 3, 2)), x[2:4])
    got = spmd.jit(lambda v, i: lax.dynamic_update_slice_in_dim(v, np.zeros((4, 1), int), i, 1))(
        x, 2
    )
    want = x.copy()
    want[:, 2] = 0
    np.testing.assert_array_equal(np.asarray(got), want)
    with pytest.raises(spmd.errors.ShapeError):
        lax.dynamic_slice_in_dim(x, 0, 1, axis=2)


def test_allclose_isclose_array_equal_copy():
    a = np.array([1.0, np.inf, np.nan, 2.0])
    b = np.array([1.0 + 1e-9, np.inf, np.nan, 2.1])
    np.testing.assert_array_equal(np.asarray(snp.isclose(a, b)), np.isclose(a, b))
    np.testing.assert_array_equal(
        np.asarray(snp.isclose(a, b, equal_nan=True)), np.isclose(a, b, equal_nan=True)
    )
    assert bool(snp.allclose(a[:2], b[:2])) and not bool(snp.allclose(a, b))
    assert bool(snp.array_equal(np.arange(3), snp.arange(3)))
    assert not bool(snp.array_equal(np.arange(3), np.arange(4)))
    x = spmd.device_put(np.arange(8.0), NamedSharding(spmd.make_mesh((8,), ("d",)), P("d")))
    c = snp.copy(x)
    assert c is not x and c.sharding == x.sharding
    np.testing.assert_array_equal(np.asarray(c), np.arange(8.0))


def test_dtype_objects_are_callable_and_compare_like_dtypes():
    three = snp.float32(3.0)
    assert isinstance(three, spmd.Array) and three.dtype == np.float32 and three.shape == ()
    assert not three.weak_type and float(three) == 3.0
    assert int(snp.int32(3.7)) == 3 and snp.int32(3.7).dtype == np.int32
    np.testing.assert_array_equal(np.asarray(snp.bfloat16([1, 2])).astype(np.float32), [1, 2])
    assert np.dtype(snp.float32) == np.float32 and snp.zeros(2).dtype == snp.float32
    assert snp.zeros(2, snp.int8).dtype == np.int8 and snp.float32 == "float32"
    assert snp.ones(2).astype(snp.bfloat16).dtype == snp.bfloat16
    assert str(spmd.jit(lambda v: snp.float32(v) * 2)(1).dtype) == "float32"


def test_array_devices_and_device_put_onto_a_device(mesh):
    a = spmd.device_put(np.arange(8.0), NamedSharding(mesh, P("x")))
    assert a.devices() == set(mesh.devices.flat)
    one = spmd.device_put(np.arange(3.0), spmd.devices()[5])
    assert one.devices() == {spmd.devices()[5]} and one.device == spmd.devices()[5]
    with pytest.raises(ShardingError, match="no mesh"):
        spmd.device_put(np.arange(3.0), P("x"))
    tree = spmd.device_put(
        {"a": np.ones(8), "b": np.ones(4)},
        {"a": NamedSharding(mesh, P("x")), "b": NamedSharding(mesh, P())},
    )
    assert spec_of(tree["a"]) == P("x") and spec_of(tree["b"]) == P()


def test_partition_spec_with_a_non_name_entry_is_a_sharding_error(mesh):
    with pytest.raises(ShardingError, match="not a mesh axis name") as err:
        spmd.device_put(np.ones(4), NamedSharding(mesh, P(1)))
    assert "test_jax_api.py" in str(err.value)
    with pytest.raises(SpmdError):
        NamedSharding(mesh, "x")


def test_visualize_inside_jit_shows_the_layout_in_the_type(mesh, capsys):
    x = spmd.device_put(np.zeros((4, 8)), NamedSharding(mesh, P("x", "y")))

    @spmd.jit
    def f(v):
        spmd.debug.visualize_array_sharding(v.sum(0))
        return v

    f(x)
    text = capsys.readouterr().out
    assert "P('y')" in text and "dev 0,4" in text and "dev 3,7" in text


@pytest.mark.parametrize(
    "body, error",
    [
        (lambda b: lax.all_gather(b, "y", axis=3, tiled=True), spmd.errors.ShapeError),
        (
            lambda b: lax.psum_scatter(b, "y", scatter_dimension=0, tiled=True),
            spmd.errors.ShapeError,
        ),
        (lambda b: lax.all_to_all(b, "y", 5, 0, tiled=True), spmd.errors.ShapeError),
        (lambda b: lax.ppermute(b, "y", [(0, 9)]), ShardingError),
        (lambda b: lax.psum(b, "z"), ShardingError),
    ],
)
def test_collective_mistakes_in_shard_map_name_the_users_line(mesh, body, error):
    mapped = spmd.shard_map(
        body, mesh=mesh, in_specs=P("x", "y"), out_specs=P("x", "y"), check_vma=False
    )
    with pytest.raises(error) as err:
        mapped(np.ones((6, 8)))
    assert "test_jax_api.py" in str(err.value)


def test_checkpoint_is_the_save_module_and_callable_as_jax_checkpoint():
    x = np.linspace(0.1, 1.0, 4)
    f = spmd.checkpoint(lambda v: snp.sin(snp.sin(v)))
    want = np.cos(np.sin(x)) * np.cos(x)
    assert_close(spmd.grad(lambda v: f(v).sum())(x), want)
    g = spmd.checkpoint(policy=spmd.checkpoint_policies.nothing_saveable)(snp.tanh)
    assert_close(spmd.jit(spmd.grad(lambda v: g(v).sum()))(x), 1 - np.tanh(x) ** 2)
    assert callable(spmd.checkpoint.save) and callable(spmd.checkpoint.restore)


def test_grad_in_a_shard_map_body_sums_the_cotangent_of_a_replicated_value():
    mesh = spmd.make_mesh((4,), ("b",))
    w = np.array([0.5, -1.0], np.float32)
    xs = np.random.default_rng(1).standard_normal((8, 2)).astype(np.float32)

    def local(w, x):
        return snp.sum(snp.tanh(x * w))

    def body(w, x):
        return spmd.grad(local)(w, x)[None]

    summed = spmd.shard_map(body, mesh=mesh, in_specs=(P(), P("b")), out_specs=P("b"))(w, xs)
    per_block = [(1 - np.tanh(blk * w) ** 2 * 1) * blk for blk in np.split(xs, 4)]
    total = sum(g.sum(0) for g in per_block)
    # JAX: w is the same on every device, so its cotangent is psum'd over 'b' (each block's
    # grad is the total); with the check off each device keeps its own block's grad
    np.testing.assert_allclose(np.asarray(summed), np.tile(total, (4, 1)), rtol=1e-5)
    local_only = spmd.shard_map(
        body, mesh=mesh, in_specs=(P(), P("b")), out_specs=P("b"), check_vma=False
    )(w, xs)
    np.testing.assert_allclose(np.asarray(local_only), [g.sum(0) for g in per_block], rtol=1e-5)


def test_out_sharding_needs_explicit_axes_as_in_jax():
    auto = spmd.make_mesh((2, 4), ("x", "y"), (AxisType.Auto, AxisType.Auto))
    with spmd.set_mesh(auto):
        with pytest.raises(ShardingError, match="Auto") as err:
            snp.zeros((8, 4), out_sharding=P("x"))
        assert "test_jax_api.py" in str(err.value)
        assert spmd.reshard(np.zeros((8, 4)), P("x")).sharding.spec == P("x")


def test_use_mesh_is_the_with_form_of_set_mesh(mesh):
    with spmd.sharding.use_mesh(mesh):
        assert spmd.get_abstract_mesh().axis_names == ("x", "y")
    assert spmd.get_abstract_mesh().empty
