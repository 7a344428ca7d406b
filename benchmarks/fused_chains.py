"""Fused elementwise/reduction chains: the CPU backend vs numpy vs JAX (jax.jit on CPU).

Run: python benchmarks/fused_chains.py [--size N] [--rounds 9] [--threads N] [--dispatch]
The three runners are interleaved (ours, numpy, JAX, ours, ...) and each figure is the median
of the rounds, so load from other jobs on a shared machine hits all three alike. The cpu
columns are process CPU time per call (all threads), which other jobs' load moves far less.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spmd
from backends.cpu import compile_program

B1, B2, LR, EPS = 0.9, 0.999, 1e-3, 1e-8


def gelu(np_: Any) -> Callable[..., Any]:
    def f(x: Any) -> Any:
        return 0.5 * x * (1 + np_.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))

    return f


def layernorm(np_: Any) -> Callable[..., Any]:
    def f(x: Any, gamma: Any, beta: Any) -> Any:
        mean = np_.mean(x, axis=-1, keepdims=True)
        centered = x - mean
        var = np_.mean(centered * centered, axis=-1, keepdims=True)
        return centered / np_.sqrt(var + 1e-5) * gamma + beta

    return f


def softmax(np_: Any) -> Callable[..., Any]:
    def f(x: Any) -> Any:
        e = np_.exp(x - np_.max(x, axis=-1, keepdims=True))
        return e / np_.sum(e, axis=-1, keepdims=True)

    return f


def adam(np_: Any) -> Callable[..., Any]:
    def f(p: Any, m: Any, v: Any, g: Any) -> Any:
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        p = p - LR * (m / (1 - B1)) / (np_.sqrt(v / (1 - B2)) + EPS)
        return p, m, v

    return f


def interleaved_medians(
    runs: list[Callable[[], Any]], rounds: int
) -> tuple[list[float], list[float]]:
    """Median wall seconds and median process CPU seconds of each runner over `rounds`
    rounds, one call of each per round."""
    for run in runs:
        run()  # warm up (and compile)
    walls: list[list[float]] = [[] for _ in runs]
    cpus: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, wall, cpu in zip(runs, walls, cpus):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return (
        [float(np.median(found)) for found in walls],
        [float(np.median(found)) for found in cpus],
    )


def cases(size: int) -> list[tuple[str, Callable[[Any], Callable[..., Any]], list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    cols = 1024
    rows = max(size // cols, 1)
    flat = rng.standard_normal(size).astype(np.float32)
    mat = rng.standard_normal((rows, cols)).astype(np.float32)
    vec = rng.standard_normal(cols).astype(np.float32)
    state = [rng.standard_normal(size).astype(np.float32) for _ in range(4)]
    state[2] = np.abs(state[2])
    return [
        ("gelu (tanh)", gelu, [flat]),
        ("layernorm fwd", layernorm, [mat, vec, vec + 1]),
        ("softmax", softmax, [mat]),
        ("adam update", adam, state),
    ]


def dispatch_us(calls: int = 5000) -> float:
    """Median microseconds per call of a tiny fused program (tanh(2a + b) on 8x8 float32)."""
    import spmd.numpy as snp

    x = np.ones((8, 8), np.float32)
    exe = compile_program(spmd.jit(lambda a, b: snp.tanh(a * 2.0 + b)).lower(x, x).graph)
    args = [x, x]
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            exe(args)
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dispatch", action="store_true", help="also time a tiny call")
    opts = parser.parse_args()
    try:
        import jax
        import jax.numpy as jnp_jax

        jax.config.update("jax_platforms", "cpu")
    except ImportError:
        jax = None
    import spmd.numpy as snp

    print(f"size={opts.size} float32, median of {opts.rounds} interleaved rounds")
    print(
        f"{'chain':16s} {'ours ms':>9s} {'numpy ms':>9s} {'jax ms':>9s} "
        f"{'np/ours':>8s} {'jax/ours':>8s} {'kernels':>7s} | cpu ms: {'ours':>7s} "
        f"{'numpy':>7s} {'jax':>7s} {'np/ours':>7s} {'jax/ours':>8s}"
    )
    for name, make, args in cases(opts.size):
        exe = compile_program(spmd.jit(make(snp)).lower(*args).graph, num_threads=opts.threads)
        np_f = make(np)
        runs = [lambda exe=exe, args=args: exe(args), lambda f=np_f, args=args: f(*args)]
        if jax is not None:
            jitted = jax.jit(make(jnp_jax))
            device_args = [jax.device_put(a) for a in args]
            runs.append(lambda f=jitted, a=device_args: jax.block_until_ready(f(*a)))
        walls, cpus = interleaved_medians(runs, opts.rounds)
        ours, numpy_t, jax_t = (walls + [float("nan")])[:3]
        ours_cpu, numpy_cpu, jax_cpu = (cpus + [float("nan")])[:3]
        print(
            f"{name:16s} {ours * 1e3:9.2f} {numpy_t * 1e3:9.2f} {jax_t * 1e3:9.2f} "
            f"{numpy_t / ours:8.2f} {jax_t / ours:8.2f} {len(exe.kernels):7d} |         "
            f"{ours_cpu * 1e3:7.1f} {numpy_cpu * 1e3:7.1f} {jax_cpu * 1e3:7.1f} "
            f"{numpy_cpu / ours_cpu:7.2f} {jax_cpu / ours_cpu:8.2f}"
        )
    if opts.dispatch:
        print(f"tiny fused program (8x8): {dispatch_us():.1f} us per call")


if __name__ == "__main__":
    main()
