"""spmd.pipeline_value_and_grad(unroll=False): every tick as one lax.scan step with the
table and its buffer plan as data. Loss and gradients equal the stages in sequence (numpy
oracle, tests/pipeline/test_pipeline_train.py's check) for 1F1B, GPipe and interleaved; the
per-device program does not grow with the microbatches (the unrolled one does)."""

import numpy as np
import pytest

import spmd
from tests.pipeline.test_pipeline_train import D, check, dot_loss, stage


@pytest.mark.parametrize(
    "schedule,p,m,v",
    [
        ("1f1b", 2, 1, 1),
        ("1f1b", 4, 4, 1),
        ("1f1b", 4, 16, 1),
        ("1f1b", 8, 8, 1),
        ("gpipe", 4, 8, 1),
        ("interleaved", 4, 8, 2),
        ("interleaved", 4, 6, 2),
    ],
)
def test_scan_loss_and_grads_equal_the_sequential_stages(schedule, p, m, v):
    check(schedule, p, m, v, unroll=False)


def per_device_ops(m, unroll):
    mesh = spmd.make_mesh((4,), ("pipe",))
    w, b = np.ones((4, D, D), np.float32), np.zeros((4, D), np.float32)
    x = t = np.ones((2 * m, D), np.float32)
    step = spmd.jit(
        lambda w, b: spmd.pipeline_value_and_grad(
            stage, dot_loss, {"w": w, "b": b}, x, t, num_microbatches=m, mesh=mesh, unroll=unroll
        )
    )
    return list(step.lower(w, b).compile().executable.partitioned.program.walk())


def test_program_size_does_not_grow_with_microbatches():
    assert len(per_device_ops(4, False)) == len(per_device_ops(16, False))
    assert len(per_device_ops(16, True)) > len(per_device_ops(4, True))
    reasons = {
        op.attrs["reason"] for op in per_device_ops(4, False) if op.name == "collective_permute"
    }
    assert reasons == {
        "pipeline 1f1b ticks 0-13 (scan over the table): forward stage k->k+1",
        "pipeline 1f1b ticks 0-13 (scan over the table): gradient k+1->k",
    }
