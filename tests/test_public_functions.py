"""An elementwise op's public functions come from its OpDef (`OpDef.public`, issue 16): a new
op registered before spmd.lax and spmd.numpy load gets spmd.lax.<name> and spmd.numpy.<name>
with no line written in either module."""

from __future__ import annotations

import numpy as np
import pytest

import spmd.numpy as snp
from spmd import lax
from spmd.ops import REGISTRY
from tests.fresh_python import fresh_python

NEW_OP = """
from dataclasses import replace
import numpy as np
from spmd.ops import REGISTRY, ZERO_GRAD
from spmd.ops.opdef import NumpyForm, Public
# a new op: `add`'s entry under another name, with its own reference and public names
REGISTRY["hypot2"] = replace(REGISTRY["add"], name="hypot2", reference=lambda x, y: x * x + y * y,
                             vjp=ZERO_GRAD, public=Public("hypot2", 2, "hypot2", NumpyForm.FLOAT))
import spmd.lax as lax, spmd.numpy as snp
x = np.array([1.0, 2.0, 3.0], np.float32)
print(np.asarray(lax.hypot2(x, x)).tolist(), np.asarray(snp.hypot2(np.arange(3), 2)).tolist(),
      lax.hypot2.__name__, snp.hypot2.__name__)
"""


@pytest.mark.timeout(120)
def test_a_new_op_gets_its_public_functions_from_its_opdef():
    out = fresh_python(NEW_OP, timeout=100)
    # oracle: x*x + y*y; numpy's form promotes the int arange with 2 and computes in float
    assert out.split() == [
        "[2.0,",
        "8.0,",
        "18.0]",
        "[4.0,",
        "5.0,",
        "8.0]",
        "hypot2",
        "hypot2",
    ]


def test_every_named_function_is_the_ops_and_runs_its_reference():
    x = np.array([0.5, 1.5, 2.0], np.float32)
    named = [d for d in REGISTRY.values() if d.public is not None]
    assert len(named) > 30
    for opdef in named:
        p = opdef.public
        fn = getattr(lax, p.lax)
        assert fn.__name__ == opdef.name
        args = (x,) * p.arity
        if opdef.name in ("and", "or", "xor", "not", "shift_left", "shift_right"):
            args = (np.array([1, 6, 3], np.int32),) * p.arity
        np.testing.assert_array_equal(np.asarray(fn(*args)), opdef.reference(*args))
        if p.numpy:
            assert getattr(snp, p.numpy).__name__ == p.numpy
            np.testing.assert_array_equal(
                np.asarray(getattr(snp, p.numpy)(*args)), opdef.reference(*args)
            )
