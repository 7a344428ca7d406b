"""The spinning workers run a kernel's chunks like the calling thread would: split runs match
one unsplit run, idle workers that went back to sleep wake for the next chunk, concurrent
callers and forked children neither hang nor mix their chunks. Every wait is bounded."""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import threading
import time

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.cpu import compile_program, spin_pool

N = 1 << 16


def _tanh_kernel() -> tuple[object, int]:
    """A one-kernel program's native fn (start, end, pointers) and its address."""
    x = np.zeros(N, np.float32)
    exe = compile_program(spmd.jit(lambda x: jnp.tanh(x) * 3 - 1).lower(x).graph)
    (step,) = [s for s in exe.steps if s.kind == "kernel"]
    return step.fn, spin_pool.native_address(step.fn)


def _pointers(x: np.ndarray, out: np.ndarray) -> ctypes.Array:
    """The kernel's argument array (the caller keeps it alive while the kernel runs)."""
    return (ctypes.c_void_p * 2)(x.ctypes.data, out.ctypes.data)


def _split(chunks: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, N, chunks + 1).astype(int).tolist()
    return list(itertools.pairwise(bounds))


def _bounded(target: object, seconds: float = 30.0) -> None:
    """Runs target on a thread and fails (instead of hanging CI) if it does not finish."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the spin pool did not finish its chunks"
    if failure:
        raise failure[0]


@pytest.mark.parametrize("workers,chunks", [(1, 1), (1, 2), (3, 4), (1, 3)])
def test_split_runs_match_one_unsplit_run(workers: int, chunks: int) -> None:
    """(1, 3): more chunks than workers + caller run on the caller, in order."""
    fn, address = _tanh_kernel()
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    want, got = np.empty_like(x), np.full_like(x, np.nan)
    fn(0, N, ctypes.addressof(_pointers(x, want)))
    pointers = _pointers(x, got)
    where = ctypes.addressof(pointers)
    pool = spin_pool.SpinPool(workers)
    _bounded(lambda: pool.run(fn, address, _split(chunks), [where] * chunks))
    np.testing.assert_array_equal(got, want)


def test_workers_that_went_back_to_sleep_wake_for_the_next_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spin_pool, "SPIN_POLLS", 10)  # idle almost at once
    fn, address = _tanh_kernel()
    pool = spin_pool.SpinPool(1)
    x = np.linspace(-3, 3, N, dtype=np.float32)
    want = np.empty_like(x)
    fn(0, N, ctypes.addressof(_pointers(x, want)))
    for pause in (0.0, 0.05, 0.2, 0.0):
        time.sleep(pause)
        got = np.zeros_like(x)
        pointers = _pointers(x, got)
        where = ctypes.addressof(pointers)
        _bounded(lambda where=where: pool.run(fn, address, _split(2), [where, where]))
        np.testing.assert_array_equal(got, want)
        assert pool.slots[0][spin_pool.DONE] == pool.slots[0][spin_pool.SEQ]


def test_concurrent_callers_each_get_their_own_results() -> None:
    """One caller holds the workers; the other runs its chunks itself."""
    fn, address = _tanh_kernel()
    pool = spin_pool.SpinPool(1)
    inputs = [np.random.default_rng(k).standard_normal(N).astype(np.float32) for k in range(4)]
    outputs = [np.zeros_like(x) for x in inputs]

    def caller(k: int) -> None:
        pointers = _pointers(inputs[k], outputs[k])
        where = ctypes.addressof(pointers)
        for _ in range(50):
            pool.run(fn, address, _split(2), [where, where])

    def all_callers() -> None:
        threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    _bounded(all_callers)
    for x, got in zip(inputs, outputs):
        want = np.empty_like(x)
        fn(0, N, ctypes.addressof(_pointers(x, want)))
        np.testing.assert_array_equal(got, want)


def _child_runs_a_split(queue: multiprocessing.Queue) -> None:
    fn, address = _tanh_kernel()
    x = np.ones(N, np.float32)
    got = np.zeros_like(x)
    pointers = _pointers(x, got)
    where = ctypes.addressof(pointers)
    spin_pool.spin_pool(2).run(fn, address, _split(2), [where, where])
    queue.put(float(got.sum()))


def test_a_forked_child_starts_its_own_workers() -> None:
    fn, address = _tanh_kernel()
    x = np.ones(N, np.float32)
    got = np.zeros_like(x)
    pointers = _pointers(x, got)
    where = ctypes.addressof(pointers)
    spin_pool.spin_pool(2).run(fn, address, _split(2), [where, where])  # parent's workers
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_runs_a_split, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's spin pool")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(float(got.sum()))
