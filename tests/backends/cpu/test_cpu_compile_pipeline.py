"""The CPU backend's LLVM pipeline and float32 exp scaling: short row loops stay loops (cold
compile time), the cache key follows the pipeline, and exp is within 1 ulp over every float32
whose result is subnormal or near overflow (where 2^k is applied in two steps)."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.cpu import cache, compile_program
from backends.cpu.codegen import build_module
from tests.backends.cpu.test_cpu_transcendentals import ulp_error


def test_short_row_sum_is_not_unrolled() -> None:
    """A [256, 64] row sum: fully unrolling the 64-wide row took 1-3 s in LLVM per kernel."""
    x = np.ones((256, 64), np.float32)
    exe = compile_program(spmd.jit(lambda a: jnp.sum(a, axis=-1)).lower(x).graph)
    (kernel,) = exe.kernels
    text = cache.optimized_ir(lambda name: build_module(kernel.spec, name))
    assert text.count("fadd") < 40, text
    np.testing.assert_allclose(exe([x])[0], np.full(256, 64.0, np.float32))


def test_kernel_key_follows_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache.kernel_key("define void @f() { ret void }")
    monkeypatch.setitem(cache.PIPELINE, "loop_unrolling", not cache.PIPELINE["loop_unrolling"])
    assert cache.kernel_key("define void @f() { ret void }") != before


def _every_float32(low: float, high: float) -> np.ndarray:
    """Every float32 in [low, high] (same sign)."""
    ends = np.sort(np.asarray([low, high], np.float32).view(np.uint32))
    return np.arange(ends[0], ends[1] + 1, dtype=np.uint32).view(np.float32)


def test_exp_within_one_ulp_for_every_subnormal_and_overflowing_result() -> None:
    x = np.concatenate([_every_float32(-105.0, -86.0), _every_float32(88.0, 89.5)])
    exe = compile_program(spmd.jit(jnp.exp).lower(x).graph)
    got = exe([x])[0]
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert np.array_equal(got == 0, want == 0)
    assert ulp_error(got, want) <= 1.0
