"""Issue 20 on the CPU mesh: does the cost model autoshard prices a CPU mesh with (the host's,
configs/chips/cpu_host.toml) rank plans as the embedded runtime runs them? Each hand plan and
autoshard's plan is simulated and then run for real on the local runtime's 8 logical devices
(the same compiled per-device program), side by side in one process.

    OMP_NUM_THREADS=1 python -m benchmarks.autoshard_measured [repeats]

Prints per program and plan: simulated ms, measured ms (median of `repeats` interleaved
rounds after one warm-up), and autoshard / best hand plan for both.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np

import spmd
import spmd.sim
from benchmarks.autoshard import ALL, block, block_shapes, gpt_shapes, gpt_step, mesh_plans, mlp
from spmd import dispatch
from spmd.api import ShapeDtypeStruct as S
from spmd.autoshard_cost import sim_options
from spmd.sharding import NamedSharding

PROGRAMS = [
    ("MLP 2048x2048x8192", mlp, [(2048, 2048), (2048, 8192), (8192, 2048)], "mlp"),
    ("block b8 s256 d512 h8 f2048", block, block_shapes(8, 256, 512, 8, 2048), "block"),
    ("GPT step, 1 layer, vocab 2048", gpt_step, gpt_shapes(8, 256, 512, 8, 2048, 2048, 1), "gpt"),
]


def _interleaved_medians(runs: dict[str, tuple[Any, list]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each run(args), results waited for: one warm-up each, then
    `repeats` rounds that call every plan once, so load on the shared machine falls on all."""
    for run, args in runs.values():
        spmd.block_until_ready(run(args))
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for label, (run, args) in runs.items():
            start = time.perf_counter()
            spmd.block_until_ready(run(args))
            times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _placed(arrays: list[np.ndarray], shardings: tuple) -> list[Any]:
    return [spmd.device_put(a, s) for a, s in zip(arrays, shardings)]


def _called(jitted: Any) -> Any:
    return lambda args: jitted(*args)


def measure(name: str, f: Any, shapes: list, plans: dict, mesh: Any, repeats: int) -> None:
    rng = np.random.default_rng(0)
    arrays = [(rng.standard_normal(s) * 0.05).astype(np.float32) for s in shapes]
    simulated, runs = {}, {}
    for label, specs in plans.items():
        shardings = tuple(NamedSharding(mesh, p) for p in specs)
        jitted = spmd.jit(f, in_shardings=shardings)
        abstract = [S(s, "float32", sh) for s, sh in zip(shapes, shardings)]
        report = spmd.sim.simulate(jitted, *abstract, check_memory=False, **sim_options(mesh))
        simulated[label] = report.step_time_s
        runs[label] = (_called(jitted), _placed(arrays, shardings))
    plan = spmd.sim.autoshard(f, *[S(s, "float32") for s in shapes], mesh=mesh)
    exe = dispatch.compile_graph(
        plan.graph, plan.flat_in, plan.flat_out, (False,) * len(plan.flat_in)
    )
    simulated["autoshard"] = plan.report.step_time_s
    runs["autoshard"] = (exe, _placed(arrays, plan.flat_in))
    measured = _interleaved_medians(runs, repeats)
    print(f"\n{name} (CPU 2x4, local runtime, median of {repeats} interleaved rounds):")
    for label in runs:
        print(
            f"  {label:12s} simulated {simulated[label] * 1e3:9.3f} ms   "
            f"measured {measured[label] * 1e3:9.3f} ms"
        )
    hand = [k for k in runs if k != "autoshard"]
    best_sim = min(hand, key=simulated.__getitem__)
    best_run = min(hand, key=measured.__getitem__)
    print(
        f"  autoshard / best hand: simulated "
        f"{simulated['autoshard'] / simulated[best_sim]:.3f} ({best_sim}), measured "
        f"{measured['autoshard'] / measured[best_run]:.3f} ({best_run})",
        flush=True,
    )


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    mesh = spmd.make_mesh((2, 4), ALL)
    plans = mesh_plans([(("data",), ("model",))], layers=1)
    for name, f, shapes, key in PROGRAMS:
        measure(name, f, shapes, plans[key], mesh, repeats)


if __name__ == "__main__":
    main()
