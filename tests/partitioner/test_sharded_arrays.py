"""Sharded spmd.Array: device_put round trips, addressable shards, uneven padding, jit
output shardings, donation and the jit cache keyed by sharding."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P
from tests.partitioner.helpers import mesh, rand

SPECS = [
    ("8", P("data")),
    ("8", P(None, "data")),
    ("2x4", P("data", "model")),
    ("2x4", P(("data", "model"))),
    ("2x4", P("model", "data")),
    ("4x2", P(None, "model")),
    ("2x2x2", P(("pipe", "data"), "model")),
    ("2x4", P()),
]


@pytest.mark.parametrize("mesh_name,spec", SPECS, ids=[f"{m}-{s}" for m, s in SPECS])
@pytest.mark.parametrize("shape", [(16, 8), (10, 7), (1, 3), (0, 5)])
def test_device_put_round_trip_and_shards(mesh_name: str, spec: P, shape: tuple) -> None:
    x = rand(shape, "float32")
    sharding = NamedSharding(mesh(mesh_name), spec)
    arr = spmd.device_put(x, sharding)
    assert arr.sharding == sharding and arr.shape == shape
    np.testing.assert_array_equal(np.asarray(arr), x)
    shards = arr.addressable_shards
    assert len(shards) == 8
    assert [s.device.id for s in shards] == list(range(8))
    covered = np.zeros(shape, dtype=int)
    for s in shards:
        np.testing.assert_array_equal(s.data, x[s.index])
        covered[s.index] += 1
    # Every element is held by (devices / shards of the array) devices.
    dims = sharding.dim_axes(len(shape))
    shard_count = int(np.prod([mesh(mesh_name).shape[a] for d in dims for a in d]))
    assert (covered == 8 // shard_count).all()
    # Device buffers are padded to equal shapes: ceil(n / k) along each sharded dim.
    local = tuple(
        -(-n // int(np.prod([mesh(mesh_name).shape[a] for a in d]))) if d else n
        for n, d in zip(shape, dims)
    )
    assert all(b.shape == local for b in arr.device_buffers())


def test_uneven_padding_is_zero_and_not_visible() -> None:
    x = np.arange(1, 11, dtype=np.int32)
    arr = spmd.device_put(x, NamedSharding(mesh("2x4"), P("model")))
    buffers = arr.device_buffers()
    # 10 over 4: shards of 3, the last holds row 9 and two padding rows.
    assert [b.tolist() for b in buffers[:4]] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 0, 0]]
    # Devices (data=1, model=k) hold the same shard as (data=0, model=k).
    assert [b.tolist() for b in buffers[4:]] == [b.tolist() for b in buffers[:4]]
    assert [s.data.tolist() for s in arr.addressable_shards][3] == [10]
    assert int(spmd.jit(snp.sum)(arr)) == 55
    assert int(spmd.jit(snp.max)(arr - 20)) == -10
    assert int(spmd.jit(snp.min)(arr + 20)) == 21


def test_device_put_dtypes_preserved() -> None:
    for dtype in ("float32", "int32", "bool", "float64"):
        x = rand((10, 4), dtype)
        with spmd.enable_x64(True):  # float64 stays float64 only with x64 on, as in JAX
            arr = spmd.device_put(x, NamedSharding(mesh("4x2"), P("data", "model")))
        got = np.asarray(arr)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)


def test_jit_output_sharding_follows_inputs_and_out_shardings() -> None:
    m = mesh("2x4")
    x = spmd.device_put(rand((8, 12)), NamedSharding(m, P("data", "model")))
    out = spmd.jit(lambda a: snp.tanh(a))(x)
    assert out.sharding == NamedSharding(m, P("data", "model"))
    want = NamedSharding(m, P("model"))
    out2 = spmd.jit(lambda a: snp.tanh(a), out_shardings=want)(x)
    assert out2.sharding == want
    np.testing.assert_allclose(np.asarray(out2), np.tanh(np.asarray(x)), rtol=1e-6)
    for s in out2.addressable_shards:
        np.testing.assert_array_equal(s.data, np.asarray(out2)[s.index])
    # An output feeds the next call without resharding through the host.
    out3 = spmd.jit(lambda a: a * 2)(out2)
    assert out3.sharding == want
    np.testing.assert_allclose(np.asarray(out3), 2 * np.asarray(out2))


def test_donate_argnums_deletes_the_donated_input() -> None:
    m = mesh("8")
    x = spmd.device_put(rand((8, 4)), NamedSharding(m, P("data")))
    y = spmd.device_put(rand((8, 4), seed=1), NamedSharding(m, P("data")))
    want = np.asarray(x) + np.asarray(y)
    out = spmd.jit(lambda a, b: a + b, donate_argnums=0)(x, y)
    np.testing.assert_allclose(np.asarray(out), want)
    assert x.is_deleted() and not y.is_deleted()
    with pytest.raises(RuntimeError, match="donated"):
        np.asarray(x)


def test_jit_cache_same_sharding_no_retrace_different_sharding_retraces() -> None:
    m = mesh("2x4")
    f = spmd.jit(lambda a: snp.sum(a * 2, axis=0))
    a = spmd.device_put(rand((8, 4)), NamedSharding(m, P("data")))
    b = spmd.device_put(rand((8, 4), seed=1), NamedSharding(m, P("data")))
    f(a)
    f(b)
    assert f.trace_count == 1
    c = spmd.device_put(rand((8, 4), seed=2), NamedSharding(m, P("model")))
    out = f(c)
    assert f.trace_count == 2
    np.testing.assert_allclose(np.asarray(out), 2 * np.asarray(c).sum(0), rtol=1e-5)
    f(spmd.device_put(np.asarray(a), NamedSharding(m, P("data"))))
    assert f.trace_count == 2
    f(np.asarray(a))  # uncommitted: a different key
    assert f.trace_count == 3
