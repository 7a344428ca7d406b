"""Trace + compile time of an MLP and a transformer block fwd+bwd, ours vs JAX, same run;
the CPU backend's disk cache cold vs warm; cached-call dispatch of a tiny function.

Run: python benchmarks/compile_time.py [--repeat 3] [--cache-repeat 2] [--number 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import models as M
import numpy as np


def cases() -> list[tuple[str, Callable[[M.Framework], Callable[..., Any]], tuple, dict]]:
    mlp = M.mlp_inputs(64, 128, 256, 128)
    block = M.block_inputs(8, 32, 64, 8, 8, 256)
    return [
        ("MLP fwd+bwd", M.mlp_loss, mlp, M.MLP_SPECS),
        ("block fwd+bwd", M.block_loss, block, M.BLOCK_SPECS),
    ]


def compile_once(fw: M.Framework, loss: Callable[..., Any], args: tuple) -> tuple[float, float]:
    """(lower seconds, compile seconds) of a fresh function object (no cache can hit)."""
    fn = fw.jit(fw.value_and_grad(loss(fw)))
    start = time.perf_counter()
    lowered = fn.lower(*args)
    mid = time.perf_counter()
    lowered.compile()
    return mid - start, time.perf_counter() - mid


def arguments(fw: M.Framework, inputs: tuple, specs: dict, sharded: bool) -> tuple:
    params, x, y = inputs
    if sharded:
        return M.placed(fw, params, specs, x, y)
    return params, x, y


def compile_table(repeat: int) -> None:
    ours, jax_fw = M.ours(), M.jax_framework()
    print(
        "\n| program | placement | JAX lower+compile s | ours lower s | ours compile s | "
        "ours total s | ours/JAX |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, loss, inputs, specs in cases():
        for sharded in (False, True):
            ours_args = arguments(ours, inputs, specs, sharded)
            jax_args = arguments(jax_fw, inputs, specs, sharded)
            samples: dict[str, list[float]] = {"jax": [], "lower": [], "compile": [], "ours": []}
            for _ in range(repeat):
                samples["jax"].append(sum(compile_once(jax_fw, loss, jax_args)))
                lower, comp = compile_once(ours, loss, ours_args)
                samples["lower"].append(lower)
                samples["compile"].append(comp)
                samples["ours"].append(lower + comp)
            med = {k: statistics.median(v) for k, v in samples.items()}
            where = "2x4 sharded" if sharded else "1 device"
            print(
                f"| {name} | {where} | {med['jax']:.3f} | {med['lower']:.3f} | "
                f"{med['compile']:.3f} | {med['ours']:.3f} | {med['ours'] / med['jax']:.2f} |"
            )


def child(cache_dir: str) -> None:
    """One fresh process: SPMD_BACKEND=cpu compile of each single-device case, and JAX's."""
    os.environ["SPMD_BACKEND"] = "cpu"
    os.environ["SPMD_CACHE_DIR"] = cache_dir
    ours, jax_fw = M.ours(), M.jax_framework()
    for fw in (ours, jax_fw):  # warm up imports, LLVM / XLA initialisation
        fw.jit(lambda a: a * 3.0 + 1.0)(np.ones(7, np.float32))
    from backends.cpu import cache

    out = {}
    for name, loss, inputs, _ in cases():
        before = dict(cache.STATS)
        out[name] = {
            "ours": sum(compile_once(ours, loss, inputs)),
            "jax": sum(compile_once(jax_fw, loss, inputs)),
            "hits": cache.STATS["hits"] - before["hits"],
            "misses": cache.STATS["misses"] - before["misses"],
        }
    print(json.dumps(out))


def run_child(cache_dir: str) -> dict[str, Any]:
    env = dict(os.environ, SPMD_BACKEND="cpu", SPMD_CACHE_DIR=cache_dir)
    done = subprocess.run(
        [sys.executable, __file__, "--child", cache_dir],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def cache_table(repeat: int) -> None:
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="spmd-bench-cache-") as cache_dir:
            for state in ("cold", "warm"):
                for name, row in run_child(cache_dir).items():
                    samples.setdefault((name, state), []).append(row)
    print(
        "\nSPMD_BACKEND=cpu, one device, first compile in a fresh process (LLVM initialised "
        "by a warm-up); cold = empty SPMD_CACHE_DIR, warm = the same dir again"
    )
    print("| program | disk cache | ours s | JAX s | ours/JAX | kernel hits/misses |")
    print("|---|---|---|---|---|---|")
    for (name, state), rows in samples.items():
        ours_s = statistics.median(r["ours"] for r in rows)
        jax_s = statistics.median(r["jax"] for r in rows)
        print(
            f"| {name} | {state} | {ours_s:.3f} | {jax_s:.3f} | {ours_s / jax_s:.2f} | "
            f"{rows[0]['hits']}/{rows[0]['misses']} |"
        )


def dispatch_table(repeat: int, number: int) -> None:
    ours, jax_fw = M.ours(), M.jax_framework()
    x = np.ones(16, np.float32)
    jax_x = jax_fw.np.asarray(x)
    jax_fn = jax_fw.jit(lambda a: a + 1.0)
    runs: dict[str, Callable[[], Any]] = {"jax": lambda: jax_fw.block_until_ready(jax_fn(jax_x))}
    for backend in ("interpreter", "cpu"):
        os.environ["SPMD_BACKEND"] = backend  # read at compile time (spmd/dispatch.py)
        fn = ours.jit(lambda a: a + 1.0)
        fn(x)
        runs[f"ours {backend}"] = lambda fn=fn: fn(x)
    os.environ.pop("SPMD_BACKEND")
    for run in runs.values():
        run()
    times = M.interleaved(runs, repeat, number)
    print("\ncached call of a tiny function (a + 1.0 on float32[16], one device), us per call")
    print("| framework | us | ours/JAX |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e6:.1f} | {t / times['jax']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="compile samples (median)")
    parser.add_argument("--cache-repeat", type=int, default=2, help="cold/warm process pairs")
    parser.add_argument("--number", type=int, default=200, help="calls per dispatch sample")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(
        M.header(
            "compile time: fresh function objects, ours vs JAX (jax.jit(...).lower().compile())"
        )
    )
    compile_table(args.repeat)
    cache_table(args.cache_repeat)
    dispatch_table(7, args.number)


if __name__ == "__main__":
    main()
