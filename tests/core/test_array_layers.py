"""Array and Tracer get their numpy operators from spmd.numpy, and a mesh Array its shards
from spmd.placement, each registered when that layer is imported (issue 16): the core that
defines them loads alone, and once the layer is loaded they behave as numpy does."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd.sharding import NamedSharding, P
from tests.fresh_python import fresh_python


def _fresh(code: str) -> str:
    return fresh_python(code).strip()


def test_the_core_array_has_no_numpy_layer_until_spmd_numpy_is_imported():
    code = (
        "import sys, numpy as np\n"
        "from spmd.array import Array\n"
        "a = Array(np.arange(6.0).reshape(2, 3))\n"
        "before = (hasattr(Array, '__add__'), 'spmd.numpy' in sys.modules,\n"
        "          'spmd.placement' in sys.modules)\n"
        "shard = a.addressable_shards[0]\n"
        "views = (a.device_buffers()[0] is np.asarray(a), shard.index, a.shape, a.dtype.name)\n"
        "import spmd.numpy\n"
        "print(before, views, np.asarray(a + 1).tolist())"
    )
    assert _fresh(code) == (
        "(False, False, False) (True, (slice(0, 2, None), slice(0, 3, None)), (2, 3), "
        "'float32') [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]"
    )


def test_a_public_name_loads_the_operators():
    code = (
        "import sys, numpy as np, spmd\n"
        "assert 'spmd.numpy' not in sys.modules\n"
        "f = spmd.grad(lambda x: (x * x).sum())\n"
        "print(np.asarray(f(np.arange(3.0))).tolist())"
    )
    assert _fresh(code) == "[0.0, 2.0, 4.0]"


X = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)


SAME_AS_NUMPY = [
    lambda x: x + 2,
    lambda x: 2 - x,
    lambda x: 2.0**x,
    lambda x: x @ x.T,
    lambda x: -abs(x),
    lambda x: x >= 3,
    lambda x: x == 4,
    lambda x: x.argmax(1),
    lambda x: x.reshape(3, 2).T.flatten(),
    lambda x: x.transpose((1, 0)).ravel(),
    lambda x: x[1, ::-1],
    lambda x: x.clip(2, 5),
    lambda x: x.swapaxes(0, 1).cumsum(0),
    lambda x: x.astype(np.int32) // 2,
]
# spmd's own positional order (axis, keepdims, ...) against numpy's keywords
OWN_ORDER = [
    (lambda x: x.sum(0, True), lambda x: x.sum(axis=0, keepdims=True)),
    (lambda x: x.mean(1, True), lambda x: x.mean(axis=1, keepdims=True)),
    (lambda x: x.var(None, False, 1), lambda x: x.var(ddof=1)),
    (lambda x: x.clip(lo=3), lambda x: x.clip(min=3)),
]


@pytest.mark.parametrize(
    "method,oracle", [(m, m) for m in SAME_AS_NUMPY] + OWN_ORDER, ids=range(18)
)
def test_operators_and_methods_match_numpy_eager_and_traced(method, oracle):
    want = np.asarray(oracle(X))
    np.testing.assert_allclose(np.asarray(method(snp.asarray(X))), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(spmd.jit(method)(X)), want, rtol=1e-6)


def test_a_mesh_array_reads_its_shards_through_the_placement_layer():
    mesh = spmd.make_mesh((2,), ("x",))
    a = spmd.device_put(X, NamedSharding(mesh, P("x")))
    np.testing.assert_array_equal(np.asarray(a), X)
    rows = sorted((s.index[0].start, s.data.tolist()) for s in a.addressable_shards)
    assert rows == [(0, [X[0].tolist()]), (1, [X[1].tolist()])]
    np.testing.assert_array_equal(np.asarray(a * 2), X * 2)  # an op on it runs partitioned
