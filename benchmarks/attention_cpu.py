"""The CPU backend's fused attention kernel (spmd.nn.dot_product_attention: tiled online
softmax in blocked numpy, backends/cpu/attention.py) against numpy's unfused attention
(scores, softmax, matmul through an S x S buffer) and JAX on CPU
(jax.jit(jax.nn.dot_product_attention), XLA), forward and forward+backward, in one run.

Run: python benchmarks/attention_cpu.py [--seqs 512 1024 2048 4096] [--rounds 7] [--threads 1]
                                       [--passes fwd fwd+bwd]
The runners are interleaved (ours, numpy, JAX, ours, ...) and each figure is the median of
the rounds, so load from other jobs on a shared machine hits all three alike; the cpu
columns are process CPU time per call, which other jobs' load moves less than wall time.
Every runner gets the same thread count (BLAS, XLA's Eigen pool).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _threads(argv: list[str]) -> int:
    return int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1


if __name__ == "__main__":  # thread counts must be set before numpy and jax load
    _n = str(_threads(sys.argv))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if _n == "1" else ""
    )

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spmd
from backends.cpu import compile_program
from benchmarks.fused_chains import interleaved_medians

B, N, H = 1, 8, 64


def numpy_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """[B,T,N,H] -> (out [B,T,N,H], probabilities [B,N,T,S]) through BLAS matmuls."""
    qt, kt, vt = (np.swapaxes(x, 1, 2) for x in (q, k, v))  # [B,N,T,H]
    s = np.matmul(qt, np.swapaxes(kt, -1, -2)) * np.float32(1 / np.sqrt(q.shape[-1]))
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, np.float32(-1e30))
    s = np.exp(s - s.max(-1, keepdims=True))
    p = s / s.sum(-1, keepdims=True)
    return np.swapaxes(np.matmul(p, vt), 1, 2), p


def numpy_grads(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, d_out: np.ndarray, causal: bool
) -> tuple[np.ndarray, ...]:
    """Forward, then the softmax backward on the saved S x S probabilities."""
    out, p = numpy_forward(q, k, v, causal)
    qt, kt, vt, dot, ot = (np.swapaxes(x, 1, 2) for x in (q, k, v, d_out, out))
    scale = np.float32(1 / np.sqrt(q.shape[-1]))
    d_v = np.matmul(np.swapaxes(p, -1, -2), dot)
    d_s = p * (np.matmul(dot, np.swapaxes(vt, -1, -2)) - (dot * ot).sum(-1, keepdims=True))
    d_q = np.matmul(d_s, kt) * scale
    d_k = np.matmul(np.swapaxes(d_s, -1, -2), qt) * scale
    return tuple(np.swapaxes(x, 1, 2) for x in (d_q, d_k, d_v))


def runners(seq: int, causal: bool, backward: bool, jax: Any) -> list[Any]:
    rng = np.random.default_rng(0)
    q, k, v, c = (rng.standard_normal((B, seq, N, H)).astype(np.float32) for _ in range(4))

    def ours_f(q: Any, k: Any, v: Any) -> Any:
        return spmd.nn.dot_product_attention(q, k, v, is_causal=causal)

    def ours_loss(q: Any, k: Any, v: Any, c: Any) -> Any:
        return (ours_f(q, k, v) * c).sum()

    fn = spmd.grad(ours_loss, argnums=(0, 1, 2)) if backward else ours_f
    args = [q, k, v, c] if backward else [q, k, v]
    exe = compile_program(spmd.jit(fn).lower(*args).graph)
    runs = [lambda: exe(args)]
    if backward:
        runs.append(lambda: numpy_grads(q, k, v, c, causal))
    else:
        runs.append(lambda: numpy_forward(q, k, v, causal))
    if jax is not None:

        def jax_f(q: Any, k: Any, v: Any) -> Any:
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal)

        def jax_loss(q: Any, k: Any, v: Any, c: Any) -> Any:
            return (jax_f(q, k, v) * c).sum()

        jitted = jax.jit(jax.grad(jax_loss, argnums=(0, 1, 2)) if backward else jax_f)
        on_device = [jax.device_put(a) for a in args]
        runs.append(lambda: jax.block_until_ready(jitted(*on_device)))
    return runs


def check(seq: int) -> None:
    """The three agree (forward and grads) before anything is timed."""
    import jax

    rng = np.random.default_rng(1)
    q, k, v, c = (rng.standard_normal((B, seq, N, H)).astype(np.float32) for _ in range(4))
    want = numpy_grads(q, k, v, c, True)
    loss = spmd.grad(
        lambda q, k, v: (spmd.nn.dot_product_attention(q, k, v, is_causal=True) * c).sum(),
        argnums=(0, 1, 2),
    )
    jloss = jax.grad(
        lambda q, k, v: (jax.nn.dot_product_attention(q, k, v, is_causal=True) * c).sum(),
        argnums=(0, 1, 2),
    )
    for got in (spmd.jit(loss)(q, k, v), jax.jit(jloss)(q, k, v)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-3, atol=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"]
    )
    opts = parser.parse_args()
    try:
        import jax

        jax.config.update("jax_platforms", "cpu")
    except ImportError:
        jax = None
    if jax is not None:
        check(256)
    print(
        f"B={B} N={N} H={H} float32, {opts.threads} thread(s), median of {opts.rounds} "
        f"interleaved rounds; S x S = numpy's probability buffer"
    )
    print(
        f"{'pass':8s} {'seq':>5s} {'causal':>6s} {'SxS MiB':>8s} | wall ms: {'ours':>8s} "
        f"{'numpy':>8s} {'jax':>8s} {'np/ours':>7s} {'jax/ours':>8s} | cpu ms: "
        f"{'ours':>8s} {'numpy':>8s} {'jax':>8s}"
    )
    for backward in [p == "fwd+bwd" for p in opts.passes]:
        for seq in opts.seqs:
            for causal in (False, True):
                walls, cpus = interleaved_medians(runners(seq, causal, backward, jax), opts.rounds)
                walls, cpus = (walls + [float("nan")])[:3], (cpus + [float("nan")])[:3]
                sxs = B * N * seq * seq * 4 / 2**20
                print(
                    f"{'fwd+bwd' if backward else 'fwd':8s} {seq:5d} {causal!s:>6s} "
                    f"{sxs:8.0f} |          {walls[0] * 1e3:8.1f} {walls[1] * 1e3:8.1f} "
                    f"{walls[2] * 1e3:8.1f} {walls[1] / walls[0]:7.2f} "
                    f"{walls[2] / walls[0]:8.2f} |         {cpus[0] * 1e3:8.1f} "
                    f"{cpus[1] * 1e3:8.1f} {cpus[2] * 1e3:8.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
