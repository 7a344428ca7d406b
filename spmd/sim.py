"""The TPU pod simulator's user API: abstract mode, simulate(f, *args), compare(f, args, shardings).

Reaches backends/tpu_sim only through spmd.dispatch (executables' `simulate`).

    >>> import spmd, spmd.sim
    >>> f = spmd.jit(lambda a, b: a @ b)
    >>> x = spmd.ShapeDtypeStruct((1024, 1024), "bfloat16")
    >>> with spmd.sim.abstract():
    ...     y = f(x, x)
    >>> y.shape, spmd.sim.last_report().step_time_s > 0
    ((1024, 1024), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from spmd.api import JitFunction, ShapeDtypeStruct, jit
from spmd.array import Array
from spmd.errors import ShardingError
from spmd.named_sharding import Sharding
from spmd.sim_calls import (
    STATE,
    SimulatedProgram,
    SimulatedValue,
    SimulationDone,
    on_call,
    record,
)
from spmd.tree import tree_flatten, tree_unflatten


@contextlib.contextmanager
def abstract(**options: Any) -> Iterator[None]:
    """Jitted calls run shapes only: they return ShapeDtypeStructs and record a SimReport.

    Options go to the simulator (chip=, topology=, slices=, overlap=, fuse=, calibrated=,
    check_memory=, donate=).
    """
    saved = dict(STATE.options)
    STATE.depth += 1
    STATE.options.update(options)
    try:
        yield
    finally:
        STATE.depth -= 1
        STATE.options = saved


def last_report() -> Any:
    """The SimReport of the latest simulated call (abstract, or numerics on a tpu-sim mesh)."""
    return STATE.last


def elapsed() -> float:
    """Simulated seconds accrued by calls since the last `reset()`."""
    return STATE.elapsed_s


def reset() -> None:
    """Forget the accrued simulated time and the last report."""
    STATE.elapsed_s = 0.0
    STATE.steps = 0
    STATE.last = None


@contextlib.contextmanager
def first_step(**options: Any) -> Iterator[dict[int, SimulatedProgram]]:
    """Run a whole script's first step on tpu-sim meshes without data (spmd-launch --simulate).

    Every jitted call on a tpu-sim mesh is simulated (recorded in the yielded dict, keyed by
    program) and returns SimulatedValues. The script stops with SimulationDone where it first
    reads one (float(loss) after its step).
    """
    saved = (STATE.programs, dict(STATE.options))
    STATE.programs = {}
    STATE.options.update(options)
    try:
        yield STATE.programs
    finally:
        STATE.programs, STATE.options = saved


def _abstract_leaf(x: Any, sharding: Any = None) -> Any:
    if isinstance(x, ShapeDtypeStruct):
        if sharding is None:
            return x
        return ShapeDtypeStruct(x.shape, x.dtype, sharding, x.weak_type)
    if isinstance(x, Array) or hasattr(x, "shape") and hasattr(x, "dtype"):
        if sharding is None and isinstance(x, Array) and x.committed:
            sharding = x.sharding
        return ShapeDtypeStruct(tuple(x.shape), str(x.dtype), sharding)
    return x


def abstract_args(args: Sequence[Any], shardings: Sequence[Any] | None = None) -> tuple:
    """Args as ShapeDtypeStructs; `shardings` gives per arg a Sharding, a pytree of them, or None."""
    given = list(shardings) if shardings is not None else [None] * len(args)
    if len(given) != len(args):
        raise ShardingError(
            f"compare got {len(given)} shardings for {len(args)} arguments",
            hint="give one sharding (or pytree of shardings, or None) per arg",
        )
    out = []
    for arg, spec in zip(args, given):
        leaves, tree = tree_flatten(arg)
        if spec is None or isinstance(spec, Sharding):
            specs = [spec] * len(leaves)
        else:
            specs = tree_flatten(spec)[0]
            if len(specs) != len(leaves):
                raise ShardingError(
                    f"a sharding pytree has {len(specs)} leaves but its argument has {len(leaves)}",
                    hint="match the argument's structure, or pass one Sharding",
                )
        out.append(tree_unflatten(tree, [_abstract_leaf(x, s) for x, s in zip(leaves, specs)]))
    return tuple(out)


def autoshard(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Choose f's layouts on a mesh by the simulator's cost model (spmd/autoshard.py)."""
    from spmd.autoshard import autoshard as plan

    return plan(f, *args, **kwargs)


def simulate(f: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """Trace, partition and simulate one call of f on abstract versions of args (no data)."""
    jitted = f if isinstance(f, JitFunction) else jit(f)
    compiled = jitted.lower(*abstract_args(args)).compile()
    report = compiled.simulate(**options)
    STATE.last = report
    record(compiled, report)
    return report


def compare(
    f: Callable[..., Any],
    args: Sequence[Any],
    shardings: Sequence[Sequence[Any]],
    labels: Sequence[str] | None = None,
    *,
    show: bool = True,
    **options: Any,
) -> list[Any]:
    """Simulate f under each sharding of its args and print them side by side.

    Each entry of `shardings` has one Sharding (or pytree of them, or None) per arg. Memory
    is not enforced here (check_memory=False): a layout that does not fit is marked.
    """
    options.setdefault("check_memory", False)
    names = list(labels) if labels is not None else [f"#{i}" for i in range(len(shardings))]
    reports = [simulate(f, *abstract_args(args, s), **options) for s in shardings]
    if show:
        print(format_comparison(reports, names))
    return reports


def format_comparison(reports: Sequence[Any], labels: Sequence[str]) -> str:
    """A side-by-side table of reports: time, compute/ICI split, MFU, memory, bytes moved."""
    rows: list[tuple[str, Callable[[Any], str]]] = [
        ("step time", lambda r: _seconds(r.step_time_s)),
        ("compute", lambda r: _seconds(r.compute_time_s)),
        ("collectives", lambda r: _seconds(r.collective_time_s)),
        ("exposed comm.", lambda r: _seconds(r.exposed_collective_s)),
        ("MFU", lambda r: f"{r.mfu * 100:.1f}%"),
        (
            "peak HBM",
            lambda r: (
                f"{r.peak_memory_bytes / 2**30:.2f} GiB"
                + (" OOM" if r.peak_memory_bytes > r.hbm_bytes else "")
            ),
        ),
        ("bytes moved", lambda r: f"{r.collective_bytes / 2**20:.1f} MiB"),
        ("collectives #", lambda r: str(sum(o.count for o in r.collectives()))),
    ]
    width = max([14, *(len(label) + 2 for label in labels)])
    lines = ["".ljust(15) + "".join(label.rjust(width) for label in labels)]
    for name, fmt in rows:
        lines.append(name.ljust(15) + "".join(fmt(r).rjust(width) for r in reports))
    return "\n".join(lines)


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-4 else f"{s * 1e6:.1f} us"


__all__ = [
    "SimulatedProgram",
    "SimulatedValue",
    "SimulationDone",
    "abstract",
    "abstract_args",
    "autoshard",
    "compare",
    "elapsed",
    "first_step",
    "format_comparison",
    "last_report",
    "on_call",
    "reset",
    "simulate",
]
