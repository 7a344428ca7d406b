"""Collective test cases and their numpy oracles, shared by the pytest suite and the MPI helper.

Imports numpy, ml_dtypes and collectives only; every rank can rebuild every rank's input.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from collectives.base import Communicator, group_members

MESHES: list[tuple[tuple[int, ...], tuple[str, ...]]] = [
    ((8,), ("x",)),
    ((2, 4), ("a", "b")),
    ((4, 2), ("a", "b")),
    ((2, 2, 2), ("a", "b", "c")),
]
UFUNCS = {
    "sum": np.add,
    "max": np.maximum,
    "min": np.minimum,
    "prod": np.multiply,
    "and": np.logical_and,
    "or": np.logical_or,
}
DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}
LARGE = (300, 160)  # 384 KB of float64: above the local transport's snapshot size


@dataclass(frozen=True)
class Case:
    """One collective call: kind, operand and keyword arguments."""

    kind: str
    shape: tuple[int, ...]
    dtype: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    strided: bool = False

    @property
    def name(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        flag = ",strided" if self.strided else ""
        return f"{self.kind}[{self.dtype}{list(self.shape)},{extra}{flag}]"


def mesh_axes_groups(axis_names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every ordered tuple of distinct mesh axes, the empty tuple included."""
    groups: list[tuple[str, ...]] = []
    for length in range(len(axis_names) + 1):
        groups.extend(itertools.permutations(axis_names, length))
    return groups


def cases_for(size: int) -> list[Case]:
    """Every case for a group of the given size."""
    cases = [Case("all_reduce", (3, 5), "float64", {"op": op}) for op in ("sum", "max", "min")]
    cases += [
        Case("all_reduce", (4, 3), "float64", {"op": "prod"}),
        Case("all_reduce", (), "float32", {"op": "sum"}),
        Case("all_reduce", (7,), "int32", {"op": "sum"}),
        Case("all_reduce", (7,), "int64", {"op": "min"}),
        Case("all_reduce", (6,), "bool", {"op": "and"}),
        Case("all_reduce", (6,), "bool", {"op": "or"}),
        Case("all_reduce", (9,), "float16", {"op": "sum"}),
        Case("all_reduce", (9,), "bfloat16", {"op": "sum"}),
        Case("all_reduce", (4, 6), "float32", {"op": "max"}, strided=True),
        Case("all_reduce", LARGE, "float64", {"op": "sum"}),
    ]
    for dim in (0, 1, -1):
        cases.append(Case("all_gather", (2, 3, 4), "float32", {"dim": dim}))
    cases += [
        Case("all_gather", (4, 6), "bfloat16", {"dim": 1}, strided=True),
        Case("all_gather", LARGE, "float64", {"dim": 1}),
    ]
    for dim, op in ((0, "sum"), (1, "max"), (-1, "sum")):
        cases.append(Case("reduce_scatter", (8, 16, 8), "float64", {"dim": dim, "op": op}))
    cases += [
        Case("reduce_scatter", (8, 4), "int32", {"dim": 0, "op": "sum"}, strided=True),
        Case("reduce_scatter", (16,), "bfloat16", {"dim": 0, "op": "sum"}),
        Case("reduce_scatter", LARGE, "float64", {"dim": 1, "op": "sum"}),
    ]
    for split_dim, concat_dim in ((0, 0), (0, 1), (1, 0), (1, 2), (2, 0)):
        kwargs = {"split_dim": split_dim, "concat_dim": concat_dim}
        cases.append(Case("all_to_all", (8, 16, 8), "float32", kwargs))
    cases += [
        Case("all_to_all", (8, 16), "int64", {"split_dim": 1, "concat_dim": 0}, strided=True),
        Case("all_to_all", LARGE, "float64", {"split_dim": 1, "concat_dim": 0}),
    ]
    shift = tuple((i, (i + 1) % size) for i in range(size))
    partial = ((0, size - 1),)
    reverse = tuple((i, size - 1 - i) for i in range(size))
    for pairs in (shift, partial, reverse, ()):
        cases.append(Case("permute", (3, 4), "float64", {"pairs": pairs}))
    cases.append(Case("permute", LARGE, "float64", {"pairs": shift}))
    for root in sorted({0, size - 1}):
        cases.append(Case("broadcast", (5, 2), "int32", {"root": root}))
    cases.append(Case("broadcast", LARGE, "float64", {"root": size - 1}))
    return cases


def make_input(rank: int, case: Case) -> np.ndarray:
    """The deterministic operand of a rank for a case (seeded by rank and case name)."""
    seed = [rank, sum(ord(c) * (i + 1) for i, c in enumerate(case.name))]
    rng = np.random.default_rng(seed)
    shape = case.shape
    if case.strided:
        shape = shape[:-1] + (shape[-1] * 2,)
    dtype = DTYPES[case.dtype] if case.dtype in DTYPES else np.dtype(case.dtype)
    if dtype == np.bool_:
        values = rng.random(shape) < 0.7
    elif dtype.kind in "iu" or dtype.itemsize <= 2:
        values = rng.integers(-4, 5, size=shape)  # small ints: 16-bit float sums stay exact
    elif case.kwargs.get("op") == "prod":
        values = rng.uniform(0.5, 1.5, size=shape)
    else:
        values = rng.standard_normal(shape)
    values = np.asarray(values).astype(dtype)
    return values[..., ::2] if case.strided else values


def call(comm: Communicator, case: Case, x: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
    """Runs the case's collective on comm."""
    method = getattr(comm, case.kind)
    return method(x, axes, **case.kwargs, where="cases.py:call")


def expected(case: Case, inputs: list[np.ndarray], index: int) -> np.ndarray:
    """The numpy oracle: what member index gets, given every member's input in group order."""
    kw = case.kwargs
    count = len(inputs)
    if case.kind in ("all_reduce", "reduce_scatter"):
        wide = [
            a.astype(np.float32) if a.dtype.itemsize == 2 and a.dtype.kind != "i" else a
            for a in inputs
        ]
        total = wide[0].copy()
        for other in wide[1:]:
            total = UFUNCS[kw["op"]](total, other)
        total = total.astype(inputs[0].dtype)
        if case.kind == "all_reduce":
            return total
        return np.split(total, count, axis=kw["dim"])[index]
    if case.kind == "all_gather":
        return np.concatenate(inputs, axis=kw["dim"])
    if case.kind == "all_to_all":
        blocks = [np.split(a, count, axis=kw["split_dim"])[index] for a in inputs]
        return np.concatenate(blocks, axis=kw["concat_dim"])
    if case.kind == "permute":
        source = {dst: src for src, dst in kw["pairs"]}.get(index)
        return np.zeros_like(inputs[0]) if source is None else inputs[source]
    if case.kind == "broadcast":
        return inputs[kw["root"]]
    raise ValueError(f"unknown case kind {case.kind!r}")


def compare(got: np.ndarray, want: np.ndarray) -> str | None:
    """None if got matches want (dtype, shape, values to the dtype's tolerance), else why not."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"got {got.dtype}{got.shape}, want {want.dtype}{want.shape}"
    if want.dtype.kind == "f" and want.dtype.itemsize >= 4:
        rtol = 1e-5 if want.dtype.itemsize == 4 else 1e-12
        close = np.allclose(got, want, rtol=rtol, atol=rtol)
    else:
        close = np.array_equal(
            got.astype(np.float64) if want.dtype.itemsize == 2 else got,
            want.astype(np.float64) if want.dtype.itemsize == 2 else want,
        )
    if close:
        return None
    return f"values differ: got {got.ravel()[:6]}..., want {want.ravel()[:6]}..."


def run_checks(comm: Communicator) -> tuple[int, list[str]]:
    """Runs every case over every axes group on comm; returns (checks run, failure messages)."""
    failures: list[str] = []
    checks = 0
    mesh_shape, axis_names = comm.mesh_shape, comm.axis_names
    for axes in mesh_axes_groups(axis_names):
        members = group_members(comm.rank, mesh_shape, axis_names, axes)
        index = members.index(comm.rank)
        for case in cases_for(len(members)):
            checks += 1
            x = make_input(comm.rank, case)
            before = x.copy()
            try:
                got = call(comm, case, x, axes)
            except Exception as exc:  # noqa: BLE001 - report, keep the other devices in step
                failures.append(f"rank {comm.rank} axes {axes} {case.name}: raised {exc!r}")
                continue
            want = expected(case, [make_input(r, case) for r in members], index)
            problem = compare(got, want)
            if problem is None and not np.array_equal(x, before):
                problem = "the input was modified"
            if problem is not None:
                failures.append(f"rank {comm.rank} axes {axes} {case.name}: {problem}")
    comm.barrier()
    return checks, failures
