"""spmd.vmap batches every op whose OpDef says it batches (`shared_operands`), from the same
facts as device batching (tests/partitioner/test_device_batching.py): the op runs once over
the batch (no per-example loop), and each example gets what the op gives it alone (the numpy
reference, per example). A new op with those facts is batched by both, with no rule to write.
"""

from __future__ import annotations

import numpy as np
import pytest

import spmd
from spmd.interpreter import run_reference
from spmd.ir.graph import Attrs, Op, fresh_id
from spmd.ops import REGISTRY
from spmd.ops.attrs import with_leading_axis
from spmd.tracing import bind
from tests.partitioner.test_device_batching import batchable_ops, value
from tests.test_registry_coverage import SAMPLES

EXAMPLES = 3


@pytest.mark.parametrize("name", batchable_ops())
def test_vmap_runs_the_op_once_over_the_batch(name: str) -> None:
    """Operand 0 and every operand that is not shared are batched; shared ones are not."""
    in_types, attrs = SAMPLES[name]()
    shared = REGISTRY[name].shared_operands
    rng = np.random.default_rng(sum(map(ord, name)))
    fixed = [value(t, rng) for t in in_types]
    mapped = [i == 0 or i not in shared for i in range(len(in_types))]
    rows = [
        [value(t, rng) if m else None for t, m in zip(in_types, mapped)] for _ in range(EXAMPLES)
    ]
    args = [np.stack([r[i] for r in rows]) if m else fixed[i] for i, m in enumerate(mapped)]
    in_axes = tuple(0 if m else None for m in mapped)

    def f(*operands):
        return bind(name, *operands, **attrs)

    batched = spmd.vmap(f, in_axes=in_axes)
    graph = spmd.jit(batched).lower(*args).graph
    assert [o.name for o in graph.ops].count(name) == 1, f"{name} ran once per example"
    got = batched(*args)
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    out = REGISTRY[name].infer(*in_types, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    op = Op(
        name,
        tuple(fresh_id() for _ in in_types),
        tuple(fresh_id() for _ in outs),
        outs,
        Attrs(attrs),
    )
    for e, row in enumerate(rows):
        want = run_reference(op, [x if x is not None else fixed[i] for i, x in enumerate(row)])
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g)[e], w, rtol=1e-5, atol=1e-6, equal_nan=True)
            assert np.asarray(g).dtype == w.dtype


def test_a_dim_counted_from_the_end_stays_as_it_is_past_the_new_axis() -> None:
    """with_leading_axis (vmap and device batching): -1 names the last dim before and after."""
    assert with_leading_axis(REGISTRY["cumsum"], {"axis": -1, "reverse": False}, 3) == {
        "axis": -1,
        "reverse": False,
    }
    assert with_leading_axis(REGISTRY["reduce"], {"kind": "sum", "axes": (0, -1)}, 3) == {
        "kind": "sum",
        "axes": (1, -1),
    }
    x = np.arange(24.0, dtype=np.float32).reshape(2, 3, 4)
    got = spmd.vmap(lambda v: spmd.lax.cumsum(v, -1))(x)
    np.testing.assert_array_equal(np.asarray(got), np.cumsum(x, -1))
