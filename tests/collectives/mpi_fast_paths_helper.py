"""Runs under mpiexec -n 4: the MPI transport's cached fast plans against numpy oracles.

Prints "FAST ok rank=R checks=N" or one "FAST FAIL ..." line per failed check.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ml_dtypes
import numpy as np

from collectives.mpi import MPICommunicator
from collectives.mpi_plans import MAX_PLANS

COUNT = 4


def operand(rank: int, shape: tuple[int, ...], dtype: object, salt: int = 0) -> np.ndarray:
    """Rank's deterministic operand: small integers, exact in every dtype used here."""
    rng = np.random.default_rng([rank, salt, *shape])
    return rng.integers(-3, 4, size=shape).astype(dtype)


def oracle(kind: str, inputs: list[np.ndarray], index: int, **kwargs: int) -> np.ndarray:
    """What member index gets from kind over the inputs of every member (sum for reductions)."""
    if kind == "all_reduce":
        return np.sum(inputs, axis=0, dtype=np.float64).astype(inputs[0].dtype)
    if kind == "reduce_scatter":
        total = np.sum(inputs, axis=0, dtype=np.float64).astype(inputs[0].dtype)
        return np.split(total, COUNT, axis=kwargs["dim"])[index]
    if kind == "all_gather":
        return np.concatenate(inputs, axis=kwargs["dim"])
    blocks = [np.split(a, COUNT, axis=kwargs["split_dim"])[index] for a in inputs]
    return np.concatenate(blocks, axis=kwargs["concat_dim"])


class Checker:
    """Runs calls on comm and records mismatches."""

    def __init__(self, comm: MPICommunicator):
        self.comm = comm
        self.checks = 0
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        self.checks += 1
        if not ok:
            self.failures.append(what)

    def run(self, kind: str, x: np.ndarray, inputs: list[np.ndarray], **kwargs: int) -> np.ndarray:
        before = x.copy()
        got = getattr(self.comm, kind)(x, "x", **kwargs)
        want = oracle(kind, inputs, self.comm.rank, **kwargs)
        name = f"{kind}{x.shape}{x.dtype}{kwargs}"
        self.expect(got.dtype == want.dtype and got.shape == want.shape, f"{name}: got {got.shape}")
        self.expect(np.array_equal(got, want), f"{name}: values differ")
        self.expect(np.array_equal(x, before), f"{name}: input modified")
        return got

    def plan_is_fast(self, kind: str, x: np.ndarray, **kwargs: int) -> bool:
        keys = [k for k in self.comm._signatures if k[0] == kind and k[-2:] == (x.shape, x.strides)]
        keys = [k for k in keys if k[-3] == x.dtype and all(v in k for v in kwargs.values())]
        return bool(keys) and self.comm._signatures[keys[-1]].fast


def fast_and_general_cases(check: Checker) -> None:
    """Each kind on a fast (leading-dim, contiguous) and on a general operand, twice each."""
    rank = check.comm.rank
    cases = [
        ("all_reduce", (8, 3), np.float32, {}, True),
        ("all_reduce", (6,), np.bool_, {}, True),
        ("all_reduce", (), np.int64, {}, True),
        ("all_reduce", (5,), ml_dtypes.bfloat16, {}, False),
        ("reduce_scatter", (8, 3), np.float64, {"dim": 0}, True),
        ("reduce_scatter", (1, 8, 3), np.float32, {"dim": 1}, True),
        ("reduce_scatter", (2, 8), np.int32, {"dim": 1}, False),
        ("reduce_scatter", (8,), np.float16, {"dim": 0}, False),
        ("all_gather", (2, 3), np.float32, {"dim": 0}, True),
        ("all_gather", (2, 3), ml_dtypes.bfloat16, {"dim": 0}, True),
        ("all_gather", (2, 3), np.float32, {"dim": -1}, False),
        ("all_to_all", (8, 3), np.float32, {"split_dim": 0, "concat_dim": 0}, True),
        ("all_to_all", (4, 2), np.int64, {"split_dim": 0, "concat_dim": 1}, True),  # (1, 8)
        ("all_to_all", (8, 2), np.int64, {"split_dim": 0, "concat_dim": 1}, False),
        ("all_to_all", (3, 8), np.float32, {"split_dim": 1, "concat_dim": 0}, False),
        # non-native byte order: reduced as values, not as native-order bits (None: any path)
        ("all_reduce", (8, 3), np.dtype(">f4"), {}, None),
        ("reduce_scatter", (8,), np.dtype(">i8"), {"dim": 0}, None),
    ]
    for kind, shape, dtype, kwargs, fast in cases:
        inputs = [operand(r, shape, dtype) for r in range(COUNT)]
        x = inputs[rank]
        first = check.run(kind, x, inputs, **kwargs)
        second = check.run(kind, x, inputs, **kwargs)  # cached plan; first is still held
        check.expect(first is not second, f"{kind}{shape}: held result overwritten")
        if fast is not None:
            check.expect(
                check.plan_is_fast(kind, x, **kwargs) == fast, f"{kind}{shape}: fast != {fast}"
            )


def strides_are_part_of_the_plan(check: Checker) -> None:
    """Same shape and dtype, C order then Fortran order then a strided view: each is right."""
    rank = check.comm.rank
    inputs = [operand(r, (4, 4), np.float32, salt=1) for r in range(COUNT)]
    x = inputs[rank]
    check.run("all_reduce", x, inputs)
    check.run("all_reduce", np.asfortranarray(x), inputs)
    check.run("all_to_all", np.asfortranarray(x), inputs, split_dim=0, concat_dim=0)
    wide = [np.repeat(a, 2, axis=1) for a in inputs]
    check.run("reduce_scatter", wide[rank][:, ::2], inputs, dim=0)


def one_site_with_alternating_signatures(check: Checker) -> None:
    """One call site fed shapes, dtypes and non-arrays in turn: each call gets its own answer."""
    rank = check.comm.rank
    for round_ in range(3):
        for shape, dtype in (((8,), np.float32), ((16,), np.float32), ((8,), np.float64)):
            inputs = [operand(r, shape, dtype, salt=4) for r in range(COUNT)]
            check.run("all_to_all", inputs[rank], inputs, split_dim=0, concat_dim=0)
            check.run("all_reduce", inputs[rank], inputs)
        listed = [[float(rank), 1.0]] * COUNT
        got = check.comm.all_reduce(listed[rank], "x")
        check.expect(np.array_equal(got, [sum(range(COUNT)), COUNT]), f"list input: {got}")


def buffers_are_reused_only_once_released(check: Checker) -> None:
    """A released fast result's buffer comes back; a held one (or a view of it) never does."""
    rank = check.comm.rank
    inputs = [operand(r, (8,), np.float32, salt=2) for r in range(COUNT)]
    x = inputs[rank]
    result = check.comm.reduce_scatter(x, "x", 0)
    address = result.ctypes.data
    del result
    again = check.comm.reduce_scatter(x, "x", 0)
    check.expect(again.ctypes.data == address, "released buffer not reused")
    view = again[1:]
    del again
    third = check.run("reduce_scatter", x, inputs, dim=0)
    check.expect(third.ctypes.data != address, "buffer reused while a view of it was held")
    feed = check.comm.all_reduce(check.comm.all_reduce(x, "x"), "x")  # its own result as input
    check.expect(np.array_equal(feed, np.sum(inputs, axis=0) * COUNT), "result fed back wrong")
    check.expect(view.base is not None, "view lost its base")


def many_shapes_overflow_the_plan_cache(check: Checker) -> None:
    """More signatures than MAX_PLANS: the cache starts afresh and results stay right."""
    rank = check.comm.rank
    for length in range(COUNT, COUNT * (MAX_PLANS + 8), COUNT):
        inputs = [operand(r, (length,), np.float32, salt=3) for r in range(COUNT)]
        check.run("all_gather", inputs[rank], inputs, dim=0)
    check.expect(len(check.comm._signatures) <= MAX_PLANS, "plan cache unbounded")


def main() -> None:
    for timeout in (None, 0):  # with the watchdog, and without
        comm = MPICommunicator((COUNT,), ("x",), timeout=timeout)
        check = Checker(comm)
        fast_and_general_cases(check)
        strides_are_part_of_the_plan(check)
        one_site_with_alternating_signatures(check)
        buffers_are_reused_only_once_released(check)
        many_shapes_overflow_the_plan_cache(check)
        comm.barrier()
        comm.close()
        for failure in check.failures:
            print(f"FAST FAIL rank={comm.rank} timeout={timeout} {failure}", flush=True)
        if not check.failures:
            print(f"FAST ok rank={comm.rank} checks={check.checks}", flush=True)


if __name__ == "__main__":
    main()
