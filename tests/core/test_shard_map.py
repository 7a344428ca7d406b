"""spmd.shard_map and the spmd.lax collectives, against hand-computed numpy expectations."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest

import spmd
from spmd import P, lax
from spmd.errors import ShapeError, ShardingError
from spmd.shard_map import shard_map
from tests.core.oracle import assert_close

MESHES = [
    ((8,), ("x",)),
    ((2, 4), ("data", "model")),
    ((4, 2), ("data", "model")),
    ((2, 2, 2), ("a", "b", "c")),
]


def _axis_groups(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    groups = [(n,) for n in names]
    if len(names) > 1:
        groups += [names, names[::-1]]
    if len(names) == 3:
        groups.append((names[0], names[2]))
    return groups


MESH_AXES = [(shape, names, axes) for shape, names in MESHES for axes in _axis_groups(names)]
MESH_IDS = [f"{'x'.join(map(str, s))}-{','.join(a)}" for s, _, a in MESH_AXES]


def group_of(
    coords: tuple[int, ...], shape: tuple[int, ...], names: tuple[str, ...], axes: tuple[str, ...]
) -> list[tuple[int, ...]]:
    """The devices of coords' group over `axes`, in group order (first axis major)."""
    pos = [names.index(a) for a in axes]
    members = []
    for sub in itertools.product(*(range(shape[p]) for p in pos)):
        member = list(coords)
        for p, v in zip(pos, sub):
            member[p] = v
        members.append(tuple(member))
    return members


def expected_blocks(
    x: np.ndarray, shape: tuple[int, ...], names: tuple[str, ...], axes: tuple[str, ...], oracle
) -> np.ndarray:
    """Per device (row-major), oracle(group's blocks, index in group), concatenated on dim 0."""
    all_coords = list(itertools.product(*(range(s) for s in shape)))
    blocks = dict(zip(all_coords, np.split(x, len(all_coords), axis=0)))
    outs = []
    for coords in all_coords:
        group = group_of(coords, shape, names, axes)
        outs.append(oracle([blocks[m] for m in group], group.index(coords)))
    return np.concatenate(outs, axis=0)


def _a2a_untiled_0_1(gb: list, i: int) -> np.ndarray:
    return np.stack([b[i] for b in gb], axis=1)


def _a2a_untiled_1_0(gb: list, i: int) -> np.ndarray:
    return np.stack([b[:, i] for b in gb], axis=0)


# name -> (body(x, axes), oracle(group blocks, index), block shape from the group size g)
COLLECTIVES = {
    "psum": (lambda x, a: lax.psum(x, a), lambda gb, i: np.sum(gb, axis=0), lambda g: (8, 8)),
    "pmean": (lambda x, a: lax.pmean(x, a), lambda gb, i: np.mean(gb, axis=0), lambda g: (8, 8)),
    "pmax": (lambda x, a: lax.pmax(x, a), lambda gb, i: np.max(gb, axis=0), lambda g: (8, 8)),
    "pmin": (lambda x, a: lax.pmin(x, a), lambda gb, i: np.min(gb, axis=0), lambda g: (8, 8)),
    "all_gather": (lambda x, a: lax.all_gather(x, a), lambda gb, i: np.stack(gb), lambda g: (2, 3)),
    "all_gather_axis1": (
        lambda x, a: lax.all_gather(x, a, axis=1),
        lambda gb, i: np.stack(gb, axis=1),
        lambda g: (2, 3),
    ),
    "all_gather_tiled_axis1": (
        lambda x, a: lax.all_gather(x, a, axis=1, tiled=True),
        lambda gb, i: np.concatenate(gb, axis=1),
        lambda g: (2, 3),
    ),
    "psum_scatter_tiled": (
        lambda x, a: lax.psum_scatter(x, a, tiled=True),
        lambda gb, i: np.split(np.sum(gb, axis=0), len(gb))[i],
        lambda g: (8, 3),
    ),
    "psum_scatter_tiled_dim1": (
        lambda x, a: lax.psum_scatter(x, a, scatter_dimension=1, tiled=True),
        lambda gb, i: np.split(np.sum(gb, axis=0), len(gb), axis=1)[i],
        lambda g: (2, 8),
    ),
    "psum_scatter": (
        lambda x, a: lax.psum_scatter(x, a),
        lambda gb, i: np.sum(gb, axis=0)[i],
        lambda g: (g, 3),
    ),
    "all_to_all_tiled": (
        lambda x, a: lax.all_to_all(x, a, 0, 1, tiled=True),
        lambda gb, i: np.concatenate([np.split(b, len(gb))[i] for b in gb], axis=1),
        lambda g: (8, 2),
    ),
    "all_to_all_tiled_1_0": (
        lambda x, a: lax.all_to_all(x, a, 1, 0, tiled=True),
        lambda gb, i: np.concatenate([np.split(b, len(gb), axis=1)[i] for b in gb], axis=0),
        lambda g: (2, 8),
    ),
    "all_to_all_0_1": (lambda x, a: lax.all_to_all(x, a, 0, 1), _a2a_untiled_0_1, lambda g: (g, 3)),
    "all_to_all_1_0": (lambda x, a: lax.all_to_all(x, a, 1, 0), _a2a_untiled_1_0, lambda g: (3, g)),
    "ppermute_shift": (
        lambda x, a: lax.ppermute(
            x, a, [(k, (k + 1) % lax.axis_size(a)) for k in range(lax.axis_size(a))]
        ),
        lambda gb, i: gb[(i - 1) % len(gb)],
        lambda g: (2, 3),
    ),
    "ppermute_partial": (
        lambda x, a: lax.ppermute(x, a, [(0, lax.axis_size(a) - 1)]),
        lambda gb, i: gb[0] if i == len(gb) - 1 else np.zeros_like(gb[0]),
        lambda g: (2, 3),
    ),
    "axis_index": (
        lambda x, a: lax.broadcast_in_dim(lax.axis_index(a), (1,), ()),
        lambda gb, i: np.array([i], dtype=np.int32),
        lambda g: (1,),
    ),
}


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
@pytest.mark.parametrize("shape,names,axes", MESH_AXES, ids=MESH_IDS)
def test_collective_in_shard_map_matches_numpy(shape, names, axes, name):
    body, oracle, block = COLLECTIVES[name]
    mesh = spmd.make_mesh(shape, names)
    g = math.prod(shape[names.index(a)] for a in axes)
    rows, *rest = block(g)
    x = np.random.default_rng(0).standard_normal((rows * mesh.size, *rest)).astype(np.float32)
    spec = P(names)
    got = np.asarray(shard_map(lambda b: body(b, axes), mesh, spec, spec)(x))
    want = expected_blocks(x, shape, names, axes, oracle)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "psum",
        "all_gather_tiled_axis1",
        "psum_scatter",
        "all_to_all_0_1",
        "ppermute_shift",
        "axis_index",
    ],
)
def test_collective_under_jit_matches_eager(name):
    shape, names = (2, 4), ("data", "model")
    axes = ("model", "data")
    body, oracle, block = COLLECTIVES[name]
    mesh = spmd.make_mesh(shape, names)
    rows, *rest = block(8)
    x = np.random.default_rng(1).standard_normal((rows * 8, *rest)).astype(np.float32)
    mapped = shard_map(lambda b: body(b, axes), mesh, P(names), P(names))
    got = np.asarray(spmd.jit(mapped)(x))
    np.testing.assert_allclose(got, expected_blocks(x, shape, names, axes, oracle), rtol=1e-5)
    np.testing.assert_allclose(got, np.asarray(mapped(x)), rtol=1e-6)


def test_splitting_and_assembling_follow_specs_on_every_dim():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)
    seen = shard_map(lambda b: b * 1.0, mesh, P("model", "data"), P("model", "data"))(x)
    np.testing.assert_array_equal(np.asarray(seen), x)
    # out_specs omit 'model' and check_vma=False: device (d, 0)'s block along 'data'
    first = shard_map(lambda b: b, mesh, P("data", "model"), P("data"), check_vma=False)(x)
    np.testing.assert_array_equal(np.asarray(first), np.concatenate([x[:4, :3], x[4:, :3]]))
    # one dim over two axes, major first; replicated input
    both = shard_map(
        lambda b, w: lax.add(b, w), mesh, (P(("model", "data")), P()), P(("model", "data"))
    )(x, np.ones((1, 12), np.float32))
    np.testing.assert_array_equal(np.asarray(both), x + 1)


def test_pytrees_of_args_outputs_and_psum():
    mesh = spmd.make_mesh((4,), ("data",))
    x = np.arange(8.0, dtype=np.float32)
    y = np.arange(4.0, dtype=np.float32) * 10

    def body(tree):
        return lax.psum(tree, "data"), lax.axis_size("data")

    (out, size) = shard_map(body, mesh, ({"x": P("data"), "y": P()},), ({"x": P(), "y": P()}, P()))(
        {"x": x, "y": y}
    )
    np.testing.assert_allclose(np.asarray(out["x"]), x.reshape(4, 2).sum(0))
    np.testing.assert_allclose(np.asarray(out["y"]), y * 4)
    assert int(np.asarray(size)) == 4


def test_mesh_from_with_block_and_psum_of_python_scalar():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x = np.arange(8.0, dtype=np.float32)
    with mesh:
        mapped = shard_map(
            lambda b: lax.mul(b, float(lax.psum(1, ("data", "model")))),
            in_specs=P(("data", "model")),
            out_specs=P(("data", "model")),
        )
        np.testing.assert_array_equal(np.asarray(mapped(x)), x * 8)


def _mse(x, w, y):
    pred = lax.dot_general(x, w, (((1,), (0,)), ((), ())))
    err = lax.sub(pred, y)
    return lax.div(lax.reduce_sum(lax.mul(err, err), (0,)), float(x.shape[0]))


def _data():
    rng = np.random.default_rng(2)
    return (rng.standard_normal((16, 4)), rng.standard_normal(4), rng.standard_normal(16))


@pytest.mark.parametrize("reduce", ["pmean", "psum"])
def test_data_parallel_loss_and_grad_equal_unsharded(reduce):
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x, w, y = _data()

    def local(xb, wb, yb):
        loss = _mse(xb, wb, yb)
        if reduce == "psum":
            return lax.div(lax.psum(loss, ("data", "model")), 8.0)
        return lax.pmean(loss, ("data", "model"))

    sharded = shard_map(local, mesh, (P(("data", "model")), P(), P(("data", "model"))), P())
    want = np.mean((x @ w - y) ** 2)
    want_grad = 2 * x.T @ (x @ w - y) / 16
    assert_close(sharded(x, w, y), want)
    assert_close(spmd.jit(sharded)(x, w, y), want)
    for run in (spmd.grad(sharded, argnums=1), spmd.jit(spmd.grad(sharded, argnums=1))):
        assert_close(run(x, w, y), want_grad)


def _matmul(a, b):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())))


def test_megatron_mlp_and_its_grads_equal_unsharded():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    rng = np.random.default_rng(3)
    x, w1, w2 = (rng.standard_normal(s) for s in ((8, 16), (16, 32), (32, 16)))
    r = rng.standard_normal((8, 16))

    def block(xb, w1b, w2b):  # column-parallel, then row-parallel + psum
        return lax.psum(_matmul(lax.tanh(_matmul(xb, w1b)), w2b), "model")

    mlp = shard_map(
        block, mesh, (P("data", None), P(None, "model"), P("model", None)), P("data", None)
    )
    h = np.tanh(x @ w1)
    assert_close(mlp(x, w1, w2), h @ w2)
    assert_close(spmd.jit(mlp)(x, w1, w2), h @ w2)

    def loss(a, b):
        return lax.reduce_sum(lax.mul(mlp(x, a, b), r), (0, 1))

    dh = r @ w2.T * (1 - h * h)
    g1, g2 = spmd.jit(spmd.grad(loss, argnums=(0, 1)))(w1, w2)
    assert_close(g1, x.T @ dh)
    assert_close(g2, h.T @ r)


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar function (float64)."""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        out[i] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return out


# name -> (body over axis 'model' of mesh (2, 4) data/model, in spec, out spec, global shape)
GRAD_CASES = {
    "psum": (lambda b: lax.psum(lax.tanh(b), "model"), P("data", "model"), P("data"), (4, 8)),
    "all_gather": (
        lambda b: lax.all_gather(lax.sin(b), "model", tiled=True),
        P("data", "model"),
        P("data"),
        (4, 8),
    ),
    "psum_scatter": (
        lambda b: lax.psum_scatter(lax.mul(b, b), "model", scatter_dimension=1, tiled=True),
        P("data"),
        P("data", "model"),
        (4, 8),
    ),
    "ppermute": (
        lambda b: lax.ppermute(lax.tanh(b), "model", [(0, 1), (1, 2), (2, 3), (3, 0)]),
        P("data", "model"),
        P("data", "model"),
        (4, 8),
    ),
    "all_to_all": (
        lambda b: lax.all_to_all(lax.tanh(b), "model", 1, 0, tiled=True),
        P("data", "model"),
        P("data", "model"),
        (4, 16),
    ),
    "unreplicated_output_from_device_0": (lambda b: lax.tanh(b), P("data", "model"), P(), (4, 8)),
    "pmax": (lambda b: lax.pmax(b, ("data", "model")), P("data", "model"), P(), (4, 8)),
}


# finite differences need float64 (see tests/core/test_grad.py)
@pytest.mark.usefixtures("x64_on")
@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_grad_through_collective_matches_finite_differences(name):
    body, in_spec, out_spec, shape = GRAD_CASES[name]
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    # JAX refuses a value varying over an axis its out_spec leaves out (all_gather's result
    # counts as varying) unless the check is off (check_vma=False)
    mapped = shard_map(
        body,
        mesh,
        in_spec,
        out_spec,
        check_vma=name not in ("unreplicated_output_from_device_0", "all_gather"),
    )
    r = rng.standard_normal(np.asarray(mapped(x)).shape)

    def loss(v):
        out = mapped(v)
        return lax.reduce_sum(lax.mul(out, r), tuple(range(len(r.shape))))

    want = numerical_grad(loss, x)
    np.testing.assert_allclose(np.asarray(spmd.grad(loss)(x)), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(spmd.jit(spmd.grad(loss))(x)), want, rtol=1e-6, atol=1e-8)


def test_unreplicated_output_under_jit_comes_from_device_0():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x = np.arange(32.0).reshape(4, 8)
    mapped = shard_map(lambda b: lax.mul(b, 2.0), mesh, P("data", "model"), P(), check_vma=False)
    np.testing.assert_array_equal(np.asarray(mapped(x)), 2 * x[:2, :2])
    np.testing.assert_array_equal(np.asarray(spmd.jit(mapped)(x)), 2 * x[:2, :2])


def test_captured_tracer_is_a_replicated_input_and_gets_its_grad():
    mesh = spmd.make_mesh((2, 2, 2), ("a", "b", "c"))
    x = np.random.default_rng(5).standard_normal((8, 2))

    def loss(scale):
        def body(xb):
            return lax.psum(lax.mul(xb, lax.broadcast_in_dim(scale, xb.shape, ())), ("a", "b"))

        out = shard_map(body, mesh, P(("a", "b"), "c"), P(None, "c"))(x)
        return lax.reduce_sum(out, (0, 1))

    blocks_sum = x.reshape(4, 2, 2).sum(0).sum()
    assert_close(spmd.jit(loss)(np.array(3.0)), 3 * blocks_sum)
    assert_close(spmd.jit(spmd.grad(loss))(np.array(3.0)), blocks_sum)
    assert_close(spmd.grad(loss)(np.array(3.0)), blocks_sum)


def _psum_tanh_map():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    return shard_map(lambda b: lax.psum(lax.tanh(b), "model"), mesh, P("data", "model"), P("data"))


def test_jvp_through_shard_map_matches_numpy():
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    out, tangent = spmd.jvp(_psum_tanh_map(), (x,), (t,))
    assert_close(out, np.tanh(x).reshape(4, 4, 2).sum(1))
    want = ((1 - np.tanh(x) ** 2) * t).reshape(4, 4, 2).sum(1)
    assert_close(tangent, want)


def test_grad_inside_the_body_differentiates_its_collectives():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x = np.random.default_rng(7).standard_normal((4, 8))

    def body(b):  # d/db of sum(psum(b * b)) over 4 devices is 4 * 2b
        return spmd.grad(lambda v: lax.reduce_sum(lax.psum(lax.mul(v, v), "model"), (0, 1)))(b)

    mapped = shard_map(body, mesh, P("data", "model"), P("data", "model"))
    assert_close(mapped(x), 8 * x)


def _second_order(mapped):
    first = spmd.grad(lambda v: lax.reduce_sum(mapped(v), (0, 1)))
    return spmd.grad(lambda v: lax.reduce_sum(lax.mul(first(v), first(v)), (0, 1)))


def test_grad_of_grad_through_shard_map_eager():
    x = np.random.default_rng(8).standard_normal((4, 8))
    th = np.tanh(x)
    want = 2 * (1 - th**2) * (-2 * th * (1 - th**2))
    assert_close(_second_order(_psum_tanh_map())(x), want)


def test_grad_of_grad_through_shard_map_under_jit():
    x = np.random.default_rng(8).standard_normal((4, 8))
    th = np.tanh(x)
    want = 2 * (1 - th**2) * (-2 * th * (1 - th**2))
    got = spmd.jit(_second_order(_psum_tanh_map()))(x)
    assert_close(got, want)


def _line_after(lines: int = 2) -> str:
    """'test_shard_map.py:N' for the caller's line `lines` below this call."""
    caller = inspect.currentframe().f_back
    return f"test_shard_map.py:{caller.f_lineno + lines}"


def test_non_divisible_shape_names_the_users_line():
    mesh = spmd.make_mesh((4,), ("data",))
    mapped = shard_map(lambda b: b, mesh, P("data"), P("data"))
    where = _line_after()
    with pytest.raises(ShardingError, match="dim 0 of size 6") as err:
        mapped(np.ones((6, 2), np.float32))
    assert where in str(err.value)
    assert "hint:" in str(err.value)


def test_unknown_axis_in_collective_names_the_users_line():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))

    def body(b):
        return lax.psum(b, "modle")

    line = f"test_shard_map.py:{body.__code__.co_firstlineno + 1}"
    with pytest.raises(ShardingError, match="unknown mesh axis 'modle'") as err:
        shard_map(body, mesh, P("data"), P("data"))(np.ones((4, 2), np.float32))
    assert line in str(err.value)
    assert "('data', 'model')" in str(err.value)


def test_psum_outside_shard_map_names_the_users_line():
    where = _line_after()
    with pytest.raises(ShardingError, match="psum of axis 'data' outside shard_map") as err:
        lax.psum(np.ones(3, np.float32), "data")
    assert where in str(err.value)
    where = _line_after()
    with pytest.raises(ShardingError, match="outside shard_map") as err:
        spmd.jit(lambda v: lax.all_gather(v, "data"))(np.ones(3, np.float32))
    assert where in str(err.value)


def test_bad_specs_name_the_users_line():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x = np.ones((4, 4), np.float32)
    where = _line_after()
    with pytest.raises(ShardingError, match="unknown mesh axis 'nope'") as err:
        shard_map(lambda b: b, mesh, P("nope"), P())(x)
    assert where in str(err.value)
    with pytest.raises(ShardingError, match="in_specs has 2 entries"):
        shard_map(lambda b: b, mesh, (P(), P()), P())(x)
    with pytest.raises(ShardingError, match="rank"):
        shard_map(lambda b: b, mesh, P(), P(None, None, "data"))(x)


def test_untiled_size_mismatch_is_a_shape_error():
    mesh = spmd.make_mesh((4,), ("data",))
    with pytest.raises(ShapeError, match="must equal the group size 4"):
        shard_map(lambda b: lax.psum_scatter(b, "data"), mesh, P(), P())(np.ones((3,)))
    with pytest.raises(ShardingError, match="appears twice"):
        shard_map(lambda b: lax.ppermute(b, "data", [(0, 1), (2, 1)]), mesh, P(), P())(
            np.ones((3,))
        )
