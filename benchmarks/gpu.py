"""GPU backend benchmarks (issue 9): fused chains vs the same chain in cupy ops (goal >= 2x)
and vs jax.jit on the GPU (goal >= 1x); bf16 matmul 8192^3 as a fraction of cuBLAS through
cupy (goal >= 0.95); MLP and transformer-block training steps vs JAX on the GPU.

Run on a machine with a GPU, cupy and JAX with CUDA: python benchmarks/gpu.py [--quick]
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
import spmd.numpy as snp
from backends import gpu
from backends.gpu import device


def gelu(np_: Any) -> Callable[..., Any]:
    return lambda x: 0.5 * x * (1 + np_.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))


def softmax(np_: Any) -> Callable[..., Any]:
    def f(x: Any) -> Any:
        e = np_.exp(x - np_.max(x, axis=-1, keepdims=True))
        return e / np_.sum(e, axis=-1, keepdims=True)

    return f


def layernorm(np_: Any) -> Callable[..., Any]:
    def f(x: Any) -> Any:
        centered = x - np_.mean(x, axis=-1, keepdims=True)
        return centered / np_.sqrt(np_.mean(centered * centered, axis=-1, keepdims=True) + 1e-5)

    return f


def adam(np_: Any) -> Callable[..., Any]:
    def f(p: Any, m: Any, v: Any, g: Any) -> Any:
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        return p - 1e-3 * (m / 0.1) / (np_.sqrt(v / 0.001) + 1e-8), m, v

    return f


def gpu_time(cp: Any, run: Callable[[], Any], repeat: int) -> float:
    """Median seconds of run() measured with CUDA events after a warm-up."""
    run()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def jax_time(fn: Callable[..., Any], args: list[Any], repeat: int) -> float | None:
    try:
        import jax
    except ImportError:
        return None
    if jax.default_backend() != "gpu":
        return None
    jitted = jax.jit(fn)
    device_args = [jax.device_put(a) for a in args]
    jax.block_until_ready(jitted(*device_args))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*device_args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fused_chains(cp: Any, size: int, repeat: int) -> None:
    print(f"## fused chains, float32, {size} elements (ms; speedups: ours vs cupy, vs JAX)")
    import importlib

    jnp = importlib.import_module("jax.numpy") if _has_jax() else None
    rows = size // 4096
    for name, make, n_args in [
        ("gelu", gelu, 1),
        ("softmax", softmax, 1),
        ("layernorm", layernorm, 1),
        ("adam", adam, 4),
    ]:
        host = [
            np.random.default_rng(k).standard_normal((rows, 4096)).astype(np.float32)
            for k in range(n_args)
        ]
        if name == "adam":
            host[2] = np.abs(host[2])
        exe = gpu.compile_program(spmd.jit(make(snp)).lower(*host).graph)
        dev = [cp.asarray(h) for h in host]
        ours = gpu_time(cp, lambda exe=exe, dev=dev: exe.call_device(dev), repeat)
        cupy_fn = make(cp)
        theirs = gpu_time(cp, lambda cupy_fn=cupy_fn, dev=dev: cupy_fn(*dev), repeat)
        jax_s = jax_time(make(jnp), host, repeat) if jnp is not None else None
        jax_text = f"{jax_s * 1e3:8.3f} ms  x{jax_s / ours:5.2f}" if jax_s else "n/a"
        print(
            f"{name:10s} ours {ours * 1e3:8.3f} ms  cupy {theirs * 1e3:8.3f} ms  "
            f"x{theirs / ours:5.2f}  jax {jax_text}  kernels={len(exe.kernels)}"
        )


def matmul(cp: Any, n: int, repeat: int) -> None:
    print(f"## bf16 matmul {n}^3 (f32 accumulation)")
    rng = np.random.default_rng(0)
    host = [rng.standard_normal((n, n)).astype(np.float32) for _ in range(2)]
    import ml_dtypes

    bf = [h.astype(ml_dtypes.bfloat16) for h in host]
    exe = gpu.compile_program(spmd.jit(lambda a, b: a @ b).lower(*bf).graph)
    dev = [device.to_device(cp, b, "bfloat16") for b in bf]
    out = cp.empty((1, n, n), np.uint16)
    a3, b3 = dev[0].reshape(1, n, n), dev[1].reshape(1, n, n)
    ours = gpu_time(cp, lambda exe=exe, dev=dev: exe.call_device(dev), repeat)
    cublas = gpu_time(cp, lambda: device.gemm(cp, a3, b3, out, "bfloat16", "bfloat16"), repeat)
    flops = 2 * n**3
    print(
        f"ours {ours * 1e3:8.3f} ms ({flops / ours / 1e12:6.1f} TFLOP/s)  cuBLAS "
        f"{cublas * 1e3:8.3f} ms ({flops / cublas / 1e12:6.1f} TFLOP/s)  "
        f"fraction {cublas / ours:5.3f}"
    )


def mlp_loss(np_: Any) -> Callable[..., Any]:
    def loss(w1: Any, w2: Any, x: Any, y: Any) -> Any:
        h = np_.maximum(x @ w1, 0.0)
        return np_.mean((h @ w2 - y) ** 2)

    return loss


def block_loss(np_: Any) -> Callable[..., Any]:
    def loss(wq: Any, wk: Any, wv: Any, w1: Any, w2: Any, x: Any, y: Any) -> Any:
        q, k, v = x @ wq, x @ wk, x @ wv
        scores = np_.einsum("btd,bsd->bts", q, k) / np.sqrt(q.shape[-1])
        att = np_.einsum("bts,bsd->btd", softmax(np_)(scores), v)
        h = layernorm(np_)(x + att)
        out = h + gelu(np_)(h @ w1) @ w2
        return np_.mean((out - y) ** 2)

    return loss


def training_steps(cp: Any, repeat: int, quick: bool) -> None:
    print("## training step (loss and grads), float32")
    rng = np.random.default_rng(0)
    d = 256 if quick else 1024
    mlp = [
        rng.standard_normal(s).astype(np.float32) * 0.02
        for s in ((d, 4 * d), (4 * d, d), (512, d), (512, d))
    ]
    b, t = (4, 128) if quick else (8, 512)
    block = [
        rng.standard_normal(s).astype(np.float32) * 0.02
        for s in ((d, d), (d, d), (d, d), (d, 4 * d), (4 * d, d), (b, t, d), (b, t, d))
    ]
    for name, make, args, n_params in [
        ("mlp", mlp_loss, mlp, 2),
        ("transformer block", block_loss, block, 5),
    ]:
        argnums = tuple(range(n_params))
        graph = spmd.jit(spmd.value_and_grad(make(snp), argnums=argnums)).lower(*args).graph
        exe = gpu.compile_program(graph)
        dev = [cp.asarray(a) for a in args]
        ours = gpu_time(cp, lambda exe=exe, dev=dev: exe.call_device(dev), repeat)
        jax_s = None
        if _has_jax():
            import jax
            import jax.numpy as jnp

            jax_s = jax_time(jax.value_and_grad(make(jnp), argnums=argnums), args, repeat)
        ratio = f"x{jax_s / ours:5.2f}" if jax_s else "n/a (no JAX on GPU)"
        print(
            f"{name:18s} ours {ours * 1e3:8.3f} ms  jax "
            f"{jax_s * 1e3 if jax_s else float('nan'):8.3f} ms  {ratio}"
        )


def _has_jax() -> bool:
    try:
        import jax
    except ImportError:
        return False
    return jax.default_backend() == "gpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    cp = device.cupy_module()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"# GPU backend on {name}")
    fused_chains(cp, (1 << 22) if args.quick else (1 << 26), args.repeat)
    matmul(cp, 2048 if args.quick else 8192, args.repeat)
    training_steps(cp, args.repeat, args.quick)


if __name__ == "__main__":
    main()
