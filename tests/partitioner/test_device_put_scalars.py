"""Numpy scalars, Python scalars and 0-d arrays go through device_put and jit arguments on
every mesh shape of the differential suite, as JAX takes them (issue 14)."""

import numpy as np
import pytest

import spmd
from spmd import NamedSharding, P
from tests.partitioner.helpers import MESH_SHAPES, mesh

SCALARS = {
    "np.float32": np.float32(2.5),
    "np.float16": np.float16(1.5),
    "np.int32": np.int32(-4),
    "np.bool_": np.bool_(True),
    "0-d float32": np.array(3.25, np.float32),
    "0-d int32": np.array(7, np.int32),
    "python float": 2.5,
    "python int": 3,
}


@pytest.mark.parametrize("mesh_name", list(MESH_SHAPES))
@pytest.mark.parametrize("name", list(SCALARS))
def test_scalar_device_put_is_replicated_and_keeps_its_value(mesh_name, name):
    value = SCALARS[name]
    placed = spmd.device_put(value, NamedSharding(mesh(mesh_name), P()))
    assert placed.shape == ()
    assert placed.sharding.spec == P()
    np.testing.assert_array_equal(np.asarray(placed), np.asarray(value))
    if isinstance(value, (np.generic, np.ndarray)):
        assert placed.dtype == value.dtype


@pytest.mark.parametrize("mesh_name", list(MESH_SHAPES))
@pytest.mark.parametrize("name", list(SCALARS))
def test_scalar_as_jit_argument_matches_numpy(mesh_name, name):
    value = SCALARS[name]
    placed = spmd.device_put(value, NamedSharding(mesh(mesh_name), P()))
    rows = spmd.device_put(
        np.arange(8, dtype=np.float32),
        NamedSharding(mesh(mesh_name), P(mesh(mesh_name).axis_names[0])),
    )

    @spmd.jit
    def scale(x, s, t):
        return x * s + t

    got = scale(rows, placed, value)
    want = np.arange(8, dtype=np.float32) * np.float32(value) + np.float32(value)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3)


@pytest.mark.parametrize("mesh_name", list(MESH_SHAPES))
def test_scalar_device_put_onto_a_sharded_spec_is_a_sharding_error(mesh_name):
    m = mesh(mesh_name)
    with pytest.raises(spmd.errors.ShardingError):
        spmd.device_put(np.float32(1.0), NamedSharding(m, P(m.axis_names[0])))
