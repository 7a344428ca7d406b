"""Per-call overhead of small sharded programs on 8 devices (2x4), ours vs JAX, same run:
steady-state call, first call (trace + partition + compile + run), and where our call goes.

Run: python benchmarks/dispatch.py [--repeat 7] [--number 20] [--first 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

import models as M
import numpy as np


def small_programs() -> list[
    tuple[str, Callable[[M.Framework], Callable[..., Any]], list[np.ndarray], list[M.Spec]]
]:
    x, w1, w2 = M.rand((32, 64), 1), M.rand((64, 128), 2), M.rand((128, 32), 3)
    params, mx, my = M.mlp_inputs(32, 64, 128, 32)

    def mlp_step(fw: M.Framework) -> Callable[..., Any]:
        return M.sgd_step(fw, M.mlp_loss(fw))

    return [
        ("elementwise x*2+1 [32,64] on data", lambda fw: lambda a: a * 2.0 + 1.0, [x], [("data",)]),
        (
            "Megatron MLP fwd [32,64]x[64,128]x[128,32]",
            lambda fw: lambda a, b, c: fw.nn.relu(a @ b) @ c,
            [x, w1, w2],
            [("data",), (None, "model"), ("model",)],
        ),
        (
            "2D MLP SGD step (3 params)",
            mlp_step,
            [params, mx, my],
            [M.MLP_SPECS, ("data",), ("data",)],
        ),
    ]


def place(fw: M.Framework, args: list[Any], specs: list[Any]) -> list[Any]:
    return [fw.put_tree(a, s) if isinstance(a, dict) else fw.put(a, s) for a, s in zip(args, specs)]


def first_call(fw: M.Framework, build: Callable[..., Any], placed: list[Any]) -> float:
    """A fresh function object each time: trace + partition + compile + run."""
    start = time.perf_counter()
    fn = fw.jit(build(fw))
    fw.block_until_ready(fn(*placed))
    elapsed = time.perf_counter() - start
    if getattr(fn, "trace_count", 1) != 1:
        raise RuntimeError("our first call did not trace exactly once")
    return elapsed


def breakdown(jitted: Any, placed: list[Any], number: int) -> dict[str, float]:
    """Our steady-state call split into its stages (mirrors JitFunction.__call__ and
    dispatch.ShardedExecutable.__call__), mean seconds per call."""
    from spmd.array import Array
    from spmd.tree import tree_unflatten

    totals = dict.fromkeys(["args+key", "shards_for", "local.run", "outputs"], 0.0)
    for _ in range(number):
        t0 = time.perf_counter()
        leaves = jitted.dynamic_leaves(tuple(placed), {})
        compiled = next(iter(jitted._cache.values()))  # one entry: these programs compile once
        ex = compiled.executable
        t1 = time.perf_counter()
        per_param = [
            ex._shards_for(a, t, s)
            for a, t, s in zip(leaves, ex.graph.param_types, ex.partitioned.param_specs)
        ]
        n = ex.mesh.size
        per_device = [[shards[d] for shards in per_param] for d in range(n)]
        t2 = time.perf_counter()
        outs = ex.local.run(per_device)
        t3 = time.perf_counter()
        results = [
            Array(shards=[outs[d][i] for d in range(n)], sharding=s, aval=t, committed=True)
            for i, (t, s) in enumerate(zip(ex.graph.result_types, ex.out_shardings))
        ]
        tree_unflatten(compiled.lowered.out_tree, results)
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    return {k: v / number for k, v in totals.items()}


def profile_top(run: Callable[[], Any], number: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(number):
        run()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start : start + top + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="samples (median is reported)")
    parser.add_argument("--number", type=int, default=20, help="calls per sample")
    parser.add_argument("--first", type=int, default=3, help="first-call samples")
    parser.add_argument("--profile", action="store_true", help="cProfile our steady state")
    args = parser.parse_args()
    print(M.header("dispatch: small sharded programs on a 2x4 mesh, ours vs JAX"))
    ours, jax_fw = M.ours(), M.jax_framework()
    import launch.local

    modes = ["lockstep"] + (["stacked"] if hasattr(launch.local, "StackedProgram") else [])
    modes.append("threads")
    print(
        "\n| program | JAX steady ms | "
        + " | ".join(f"ours {m} ms" for m in modes)
        + " | best ours/JAX | JAX first s | ours first s | ratio |"
    )
    print("|---|---|" + "---|" * len(modes) + "---|---|---|---|")
    details = []
    for name, build, args_np, specs in small_programs():
        ours_args, jax_args = place(ours, args_np, specs), place(jax_fw, args_np, specs)
        firsts: dict[str, list[float]] = {"jax": [], "ours": []}
        for _ in range(args.first):
            firsts["jax"].append(first_call(jax_fw, build, jax_args))
            firsts["ours"].append(first_call(ours, build, ours_args))
        ours_fn, jax_fn = ours.jit(build(ours)), jax_fw.jit(build(jax_fw))
        ours.block_until_ready(ours_fn(*ours_args))
        jax_fw.block_until_ready(jax_fn(*jax_args))
        compiled = next(iter(ours_fn._cache.values()))
        auto_mode = compiled.executable.local.mode
        runs: dict[str, Callable[[], Any]] = {
            "jax": lambda fn=jax_fn, xs=jax_args: jax_fw.block_until_ready(fn(*xs))
        }
        local = compiled.executable.local

        def in_mode(
            mode: str, local: Any = local, fn: Any = ours_fn, xs: list[Any] = ours_args
        ) -> Callable[[], Any]:
            def run() -> Any:
                local.mode = mode
                return fn(*xs)

            return run

        for mode in modes:
            runs[mode] = in_mode(mode)
        steady = M.interleaved(runs, args.repeat, args.number)
        best = min(steady[m] for m in modes)
        jax_first, ours_first = (float(np.median(firsts[k])) for k in ("jax", "ours"))
        cells = " | ".join(f"{steady[m] * 1e3:.3f}" for m in modes)
        print(
            f"| {name} | {steady['jax'] * 1e3:.3f} | {cells} | {best / steady['jax']:.1f} | "
            f"{jax_first:.3f} | {ours_first:.3f} | {ours_first / jax_first:.2f} |"
        )
        stages = {}
        for mode in modes:
            local.mode = mode
            stages[mode] = breakdown(ours_fn, ours_args, args.number)
        local.mode = auto_mode
        details.append((name, auto_mode, stages, ours_fn, ours_args))
    print(
        "\nour steady-state call by stage, ms per call (auto: launch/local.py "
        "LocalExecutable._choose_mode)"
    )
    print("| program | mode | args+key | shards_for | local.run | outputs | sum |")
    print("|---|---|---|---|---|---|---|")
    for name, auto_mode, stages, _, _ in details:
        for mode, st in stages.items():
            cells = " | ".join(f"{v * 1e3:.3f}" for v in st.values())
            tag = f"{mode}{' (auto)' if mode == auto_mode else ''}"
            print(f"| {name} | {tag} | {cells} | {sum(st.values()) * 1e3:.3f} |")
    if args.profile:
        for name, auto_mode, _, fn, placed in details:
            for mode in modes:
                next(iter(fn._cache.values())).executable.local.mode = mode
                print(f"\ncProfile, {name}, {mode}, {args.number * 5} calls, top by tottime")
                print(profile_top(lambda fn=fn, xs=placed: fn(*xs), args.number * 5, 12))


if __name__ == "__main__":
    main()
