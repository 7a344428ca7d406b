"""spmd.pipeline(unroll=False): the forward ticks as one lax.scan with the schedule table as
data. Outputs and gradients equal the stages run in sequence (numpy oracle) for GPipe and
interleaved (a last group smaller than the ring included; the 2x2x2 data x pipe x model
case is test_pipeline_gpipe.py's, run with unroll=False too); the program does not grow with the number of microbatches (the unrolled one
does); its permute is named once, for every tick."""

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from tests.pipeline.oracle import mlp_forward, mlp_grads
from tests.pipeline.test_pipeline_gpipe import data, stage


def grads_and_output(p, m, schedule="gpipe", v=1, unroll=False):
    mesh = spmd.make_mesh((p,), ("pipe",))
    w, b, x, t = data(p * v, 2 * m)

    def loss(w, b, x):
        y = spmd.pipeline(
            stage,
            {"w": w, "b": b},
            x,
            num_microbatches=m,
            schedule=schedule,
            stages_per_device=v,
            mesh=mesh,
            unroll=unroll,
        )
        return snp.sum(y * t), y

    f = spmd.jit(spmd.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, y), grads = f(w, b, x)
    return (w, b, x, t), y, grads, f.lower(w, b, x).compile()


@pytest.mark.parametrize(
    "p,m,schedule,v",
    [
        (2, 1, "gpipe", 1),
        (4, 4, "gpipe", 1),
        (4, 16, "gpipe", 1),
        (8, 8, "gpipe", 1),
        (2, 2, "interleaved", 2),
        (4, 8, "interleaved", 2),
        (4, 6, "interleaved", 2),
        (2, 3, "interleaved", 3),
    ],
)
def test_scan_outputs_and_grads_equal_the_sequential_stages(p, m, schedule, v):
    (w, b, x, t), y, grads, _ = grads_and_output(p, m, schedule, v)
    np.testing.assert_allclose(np.asarray(y), mlp_forward(w, b, x)[-1], rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, mlp_grads(w, b, x, t)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def per_device_ops(compiled):
    """Every op of the partitioned per-device program, scan bodies included."""
    return list(compiled.executable.partitioned.program.walk())


def test_program_size_does_not_grow_with_microbatches():
    def size(m, unroll):
        return len(per_device_ops(grads_and_output(4, m, unroll=unroll)[3]))

    assert size(4, False) == size(16, False)
    assert size(16, True) > size(4, True) > size(4, False)


def test_the_scan_permute_is_named_for_every_tick():
    ops = per_device_ops(grads_and_output(4, 4)[3])
    reasons = {op.attrs["reason"] for op in ops if op.name == "collective_permute"}
    assert any(r.startswith("pipeline gpipe ticks 0-5 (scan over the table)") for r in reasons), (
        reasons
    )
