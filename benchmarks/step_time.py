"""One training step (value_and_grad + SGD) of an MLP and a transformer block, on one device
and 2x4-sharded on the local runtime, ours (SPMD_BACKEND x SPMD_LOCAL_MODE) vs JAX on as
many host devices.

Run: python benchmarks/step_time.py [--scale 1] [--repeat 5] [--number 2] [--all-configs]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import models as M

WARMUP_STEPS = 15  # a dot tries its variants on its first <= 12 calls (backends/cpu/dots.py)


def configs(devices: int, every: bool) -> list[tuple[str, str, int]]:
    """(SPMD_LOCAL_MODE, SPMD_BACKEND, BLAS threads or 0 for as is): the backend only matters
    where devices run compiled per-device programs (threads) or the batched program (stacked:
    cpu compiles it, interpreter runs numpy op by op); lockstep runs numpy directly. BLAS
    threads are capped with threadpoolctl around our calls only. On one device every mode
    runs the same program: the numpy reference and the compiled one are compared."""
    if devices == 1:
        return [("lockstep", "interpreter", 0), ("auto", "auto", 0)]
    grid = [
        ("lockstep", "interpreter", 0),
        ("threads", "cpu", 0),
        ("stacked", "cpu", 0),
        ("auto", "auto", 0),
    ]
    if not every:
        return grid
    return grid + [
        ("stacked", "interpreter", 0),
        ("threads", "interpreter", 0),
        ("stacked", "interpreter", 1),
        ("threads", "cpu", 1),
    ]


def label(mode: str, backend: str, blas: int) -> str:
    return f"{mode}/{backend}" + (f"/blas={blas}" if blas else "")


def cases(scale: int) -> list[tuple[str, Callable[..., Any], tuple, dict]]:
    mlp = M.mlp_inputs(128 * scale, 256 * scale, 1024 * scale, 256 * scale)
    block = M.block_inputs(8 * scale, 64, 128 * scale, 8, 16 * scale, 512 * scale)
    return [
        (
            f"MLP {mlp[1].shape[0]}x{mlp[1].shape[1]} hidden {mlp[0]['w1'].shape[1]}",
            M.mlp_loss,
            mlp,
            M.MLP_SPECS,
        ),
        (
            (
                f"block b{block[1].shape[0]} t{block[1].shape[1]} d{block[1].shape[2]} "
                f"ff{block[0]['w1'].shape[1]}"
            ),
            M.block_loss,
            block,
            M.BLOCK_SPECS,
        ),
    ]


def compile_ours(
    fw: M.Framework, loss: Callable[..., Any], args: tuple, mode: str, backend: str, blas: int = 0
) -> tuple[Callable[[], Any], str, int]:
    """A jitted step compiled and first run under SPMD_BACKEND=backend (read when the
    per-device program is compiled, which may be at the first call); returns the runner,
    the mode it runs in, and how many native kernels it built or loaded."""
    from backends.cpu import cache

    before = sum(cache.STATS.values())
    saved = {k: os.environ.get(k) for k in ("SPMD_BACKEND", "SPMD_LOCAL_MODE")}
    os.environ["SPMD_BACKEND"] = backend
    os.environ.pop("SPMD_LOCAL_MODE", None)
    if mode != "auto":
        os.environ["SPMD_LOCAL_MODE"] = mode
    try:
        compiled = fw.jit(M.sgd_step(fw, loss(fw))).lower(*args).compile()
        fw.block_until_ready(compiled(*args))
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    kernels = sum(cache.STATS.values()) - before

    def run() -> Any:
        if not blas:
            return fw.block_until_ready(compiled(*args))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(blas, "blas"):
            return fw.block_until_ready(compiled(*args))

    return run, compiled.executable.local.mode, kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=1, help="multiply the model widths")
    parser.add_argument("--repeat", type=int, default=5, help="samples (median reported)")
    parser.add_argument("--number", type=int, default=2, help="steps per sample")
    parser.add_argument(
        "--all-configs",
        action="store_true",
        help="also the interpreter on stacked/threads and BLAS-capped runs",
    )
    args = parser.parse_args()
    print(
        M.header(
            "training step, one device and a 2x4 mesh (batch on data, hidden/heads on "
            "model), ours vs JAX"
        )
    )
    notes: list[str] = []
    for mesh in ((1, 1), (2, 4)):
        table(mesh, args, notes)
    print()
    for note in notes:
        print(note)


def table(mesh: tuple[int, int], args: argparse.Namespace, notes: list[str]) -> None:
    """One markdown table: each program's step time under JAX and each config of ours."""
    ours, jax_fw = M.ours(mesh), M.jax_framework(mesh)
    grid = configs(mesh[0] * mesh[1], args.all_configs)
    where = f"{mesh[0]}x{mesh[1]}"
    print(
        "\n| program | mesh | JAX ms | "
        + " | ".join(f"ours {label(*c)} ms" for c in grid)
        + " | best ours/JAX |"
    )
    print("|---|---|---|" + "---|" * len(grid) + "---|")
    for name, loss, inputs, specs in cases(args.scale):
        jax_args = M.placed(jax_fw, inputs[0], specs, inputs[1], inputs[2])
        ours_args = M.placed(ours, inputs[0], specs, inputs[1], inputs[2])
        jax_step = jax_fw.jit(M.sgd_step(jax_fw, loss(jax_fw)))
        runs: dict[str, Callable[[], Any]] = {
            "jax": lambda fn=jax_step, xs=jax_args: jax_fw.block_until_ready(fn(*xs))
        }
        for config in grid:
            run, actual, kernels = compile_ours(ours, loss, ours_args, *config)
            runs[label(*config)] = run
            notes.append(
                f"{name} on {where}: ours {label(*config)} ran as {actual}, "
                f"{kernels} native kernels built or loaded"
            )
        for run in runs.values():
            for _ in range(WARMUP_STEPS):  # compiles, then each dot's variant trials
                run()
        times = M.interleaved(runs, args.repeat, args.number)
        best = min(v for k, v in times.items() if k != "jax")
        cells = " | ".join(f"{times[label(*c)] * 1e3:.1f}" for c in grid)
        print(
            f"| {name} | {where} | {times['jax'] * 1e3:.2f} | {cells} | {best / times['jax']:.2f} |"
        )


if __name__ == "__main__":
    main()
