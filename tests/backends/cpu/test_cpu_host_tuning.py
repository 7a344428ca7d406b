"""Process-wide host tuning done by the CPU backend: glibc malloc thresholds (results of a
step reuse freed pages instead of faulting fresh ones) and its opt-out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from backends.cpu import allocator

STEP = textwrap.dedent("""
    import resource
    import numpy as np
    import spmd
    import spmd.numpy as jnp

    step = spmd.jit(lambda a, b, g: (a - 0.1 * jnp.tanh(g), b - g @ g))
    a, b, g = (np.ones((512, 512), np.float32) for _ in range(3))
    for _ in range(3):
        a, b = step(a, b, g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a, b = step(a, b, g)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults_per_step(tuning: str) -> float:
    env = {**os.environ, "SPMD_MALLOC_TUNING": tuning, "SPMD_BACKEND": "cpu"}
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return int(out.split()[-1]) / 10


@pytest.mark.skipif(not allocator.tune(), reason="not glibc")
def test_step_results_reuse_freed_pages_instead_of_faulting_new_ones() -> None:
    """Two 1 MB results per step: ~240 fresh pages per step untuned (glibc trims the heap
    each step), none once tuned."""
    assert _faults_per_step("1") < 100 < _faults_per_step("0")


def test_opt_out_leaves_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_MALLOC_TUNING", "0")
    assert allocator.tune.__wrapped__() is False
