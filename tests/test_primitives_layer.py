"""spmd.primitives, the builders the ops' derivative rules emit with, sits below the op
families (docs/architecture.md): it imports none of them nor the public layer, makes its
elementwise functions from the registry when first asked, and spmd.lax re-exports it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fresh_python import fresh_python

ALONE = """
import json, sys
import spmd.primitives
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("spmd.ops", "spmd.lax",
                                                                "spmd.numpy")))))
"""


@pytest.mark.timeout(120)
def test_primitives_load_without_any_op_family_or_the_public_layer():
    assert json.loads(fresh_python(ALONE, timeout=100)) == []


def test_elementwise_builders_come_from_the_registry_and_spmd_lax_shares_them():
    from spmd import lax, primitives
    from spmd.ops import REGISTRY

    x = np.array([0.5, -1.5, 2.0], np.float32)
    named = [d for d in REGISTRY.values() if d.public is not None and d.public.arity == 1]
    assert len(named) > 10
    for opdef in named:
        arg = np.array([1, 6, -3], np.int32) if opdef.name == "not" else x
        built = getattr(primitives, opdef.public.lax)
        assert getattr(lax, opdef.public.lax) is built
        assert opdef.public.lax in dir(lax)
        np.testing.assert_array_equal(np.asarray(built(arg)), opdef.reference(arg))
    for name in ("select", "reshape", "dot_general", "gather", "scatter_add", "pad"):
        assert getattr(lax, name) is getattr(primitives, name)
    with pytest.raises(AttributeError):
        primitives.no_such_op  # noqa: B018 (the attribute access is the test)
