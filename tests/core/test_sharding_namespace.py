"""`spmd.sharding` is the public namespace (JAX's jax.sharding) over the core's
spmd.named_sharding: the same objects under both names, reshard and friends where JAX users
look, and a core that loads without them (issue 16)."""

from __future__ import annotations

import json
import pickle

import numpy as np

import spmd
import spmd.explicit
import spmd.mesh
import spmd.named_sharding
from spmd.sharding import Mesh, NamedSharding, P, auto_axes, explicit_axes, reshard
from tests.fresh_python import fresh_python


def test_every_public_name_is_the_defining_modules_object():
    for name in spmd.sharding.__all__:
        value = getattr(spmd.sharding, name)
        homes = [m for m in (spmd.named_sharding, spmd.mesh, spmd.explicit) if hasattr(m, name)]
        assert homes and all(getattr(m, name) is value for m in homes), name
    assert (reshard, auto_axes, explicit_axes) == (
        spmd.explicit.reshard,
        spmd.explicit.auto_axes,
        spmd.explicit.explicit_axes,
    )
    assert spmd.sharding.NamedSharding is spmd.NamedSharding is spmd.named_sharding.NamedSharding
    assert spmd.sharding.use_mesh is spmd.mesh.use_mesh


def test_a_sharding_prints_and_pickles_as_before():
    mesh = spmd.make_mesh((2, 4), ("x", "y"))
    s = NamedSharding(mesh, P("x", None, unreduced={"y"}))
    assert repr(s) == f"NamedSharding({mesh!r}, P('x', None, unreduced={{'y'}}))"
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.spec.unreduced == frozenset({"y"})
    assert isinstance(mesh, Mesh)


def test_reshard_from_the_public_module_moves_values_unchanged():
    x = np.arange(32.0).reshape(4, 8)
    mesh = spmd.make_mesh((2, 4), ("x", "y"))
    with spmd.set_mesh(mesh):
        a = reshard(x, P("x", "y"))
        assert a.sharding == NamedSharding(mesh, P("x", "y"))
        np.testing.assert_array_equal(np.asarray(reshard(a, P(None, "x"))), x)


ALONE = """
import importlib, json, sys
importlib.import_module("spmd.named_sharding")
print(json.dumps(sorted(m for m in ("spmd.sharding", "spmd.explicit", "spmd.tracing")
                        if m in sys.modules)))
"""


def test_the_core_module_loads_without_the_public_one_or_the_tracer():
    assert json.loads(fresh_python(ALONE).strip().splitlines()[-1]) == []
