"""The sharding API around jit: in_shardings forms, bare specs under `with mesh:`,
visualize_sharding, memory_per_device, and the user errors of issue 4."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, errors
from spmd.visualize import sharding_table

MESH = spmd.make_mesh((2, 4), ("data", "model"))


def put(x: np.ndarray, *spec: object) -> spmd.Array:
    return spmd.device_put(x, NamedSharding(MESH, P(*spec)))


def test_in_shardings_one_per_argument_and_pytrees() -> None:
    x = np.arange(32, dtype=np.float32).reshape(8, 4)
    params = {"w": np.ones((4, 8), np.float32), "b": np.zeros(8, np.float32)}
    f = spmd.jit(
        lambda x, p: x @ p["w"] + p["b"],
        in_shardings=(
            NamedSharding(MESH, P("data")),
            {"w": NamedSharding(MESH, P(None, "model")), "b": None},
        ),
    )
    out = f(x, params)
    np.testing.assert_allclose(np.asarray(out), x @ params["w"])
    assert out.sharding == NamedSharding(MESH, P("data", "model"))


def test_one_sharding_applies_to_every_argument() -> None:
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    f = spmd.jit(lambda a, b: a * b, in_shardings=NamedSharding(MESH, P("data")))
    out = f(x, x)
    np.testing.assert_allclose(np.asarray(out), x * x)
    assert out.sharding.spec == P("data")


def test_bare_partition_spec_uses_the_enclosing_mesh() -> None:
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    with MESH:
        f = spmd.jit(
            lambda a: spmd.with_sharding_constraint(a * 2, P("model")),
            in_shardings=P("data"),
            out_shardings=P("model"),
        )
        out = f(x)
    np.testing.assert_allclose(np.asarray(out), x * 2)
    assert out.sharding == NamedSharding(MESH, P("model"))


def test_wrong_number_of_in_shardings_is_a_sharding_error() -> None:
    f = spmd.jit(lambda a, b: a + b, in_shardings=(NamedSharding(MESH, P()),) * 3)
    with pytest.raises(errors.ShardingError, match="3 entries but the function takes 2"):
        f(np.ones(2), np.ones(2))


@pytest.mark.parametrize(
    "spec,message",
    [
        (P("nope"), "unknown mesh axis 'nope'"),
        (P("data", "data"), "used twice"),
        (P("data", None, "model"), "has 3 entries but the array has rank 2"),
    ],
)
def test_bad_specs_name_the_user_line(spec: P, message: str) -> None:
    with pytest.raises(errors.ShardingError, match=message) as err:
        spmd.device_put(np.ones((4, 4)), NamedSharding(MESH, spec))
    assert "test_api_sharding.py" in str(err.value)


def test_mesh_larger_than_the_devices_is_a_mesh_error() -> None:
    with pytest.raises(errors.MeshError, match="needs 16 devices but only 8"):
        spmd.make_mesh((4, 4), ("data", "model"))


def test_sharding_a_non_array_is_an_error() -> None:
    with pytest.raises(errors.SpmdError):
        spmd.device_put("not an array", NamedSharding(MESH, P()))
    with pytest.raises(errors.ShardingError, match="expected a Sharding"):
        spmd.jit(lambda a: a, in_shardings=("data",))(np.ones(2))


def test_visualize_sharding_shows_each_block_with_its_devices() -> None:
    x = put(np.ones((8, 8), np.float32), "data", "model")
    lines = sharding_table(x).splitlines()
    assert lines[2] == "| dev 0 | dev 1 | dev 2 | dev 3 |"
    assert lines[4] == "| dev 4 | dev 5 | dev 6 | dev 7 |"
    replicated_rows = sharding_table(put(np.ones((8, 8), np.float32), "model"))
    assert "| dev 0,4 |" in replicated_rows and replicated_rows.count("dev ") == 4


def test_memory_per_device_counts_local_shards_and_temporaries() -> None:
    x = put(np.ones((64, 32), np.float32), "data", "model")  # local shard 32 x 8 floats
    compiled = spmd.jit(lambda a: snp.tanh(a) * 2 + 1).lower(x).compile()
    local = 32 * 8 * 4
    # the input shard and the result shard are live at the end; a temporary may be too
    assert 2 * local <= compiled.memory_per_device() <= 4 * local
