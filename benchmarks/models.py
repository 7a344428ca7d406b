"""Shared benchmark models written once against a numpy-like module, run on ours and JAX.

`Framework` wraps spmd or jax (8 host devices) behind one small interface; `mlp_*` and
`block_*` build the same programs, shapes and shardings for both.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spmd import config

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Spec = tuple[Any, ...]


@dataclass
class Framework:
    """One framework's entry points: np-like module, nn, jit, autodiff, mesh placement."""

    name: str
    np: Any
    nn: Any
    jit: Callable[..., Any]
    value_and_grad: Callable[..., Any]
    tree_map: Callable[..., Any]
    mesh: Any
    named_sharding: Callable[[Any, Any], Any]
    partition_spec: Callable[..., Any]
    device_put_fn: Callable[[Any, Any], Any]
    block_until_ready: Callable[[Any], Any]
    constrain_fn: Callable[[Any, Any], Any]

    def sharding(self, spec: Spec) -> Any:
        return self.named_sharding(self.mesh, self.partition_spec(*spec))

    def constrain(self, x: Any, spec: Spec) -> Any:
        return self.constrain_fn(x, self.sharding(spec))

    def put(self, x: np.ndarray, spec: Spec) -> Any:
        return self.device_put_fn(x, self.sharding(spec))

    def put_tree(self, values: dict[str, np.ndarray], specs: dict[str, Spec]) -> dict[str, Any]:
        return {k: self.put(v, specs[k]) for k, v in values.items()}


def ours(
    mesh_shape: tuple[int, ...] = (2, 4),
    names: tuple[str, ...] = ("data", "model"),
) -> Framework:
    import spmd
    import spmd.numpy as snp
    from spmd import nn

    return Framework(
        "ours",
        snp,
        nn,
        spmd.jit,
        spmd.value_and_grad,
        spmd.tree_map,
        spmd.make_mesh(mesh_shape, names),
        spmd.NamedSharding,
        spmd.P,
        spmd.device_put,
        spmd.block_until_ready,
        spmd.with_sharding_constraint,
    )


def jax_framework(
    mesh_shape: tuple[int, ...] = (2, 4), names: tuple[str, ...] = ("data", "model")
) -> Framework:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()[: int(np.prod(mesh_shape))]).reshape(mesh_shape)
    return Framework(
        "jax",
        jnp,
        jax.nn,
        jax.jit,
        jax.value_and_grad,
        jax.tree_util.tree_map,
        Mesh(devices, names),
        NamedSharding,
        PartitionSpec,
        jax.device_put,
        jax.block_until_ready,
        jax.lax.with_sharding_constraint,
    )


def header(title: str) -> str:
    import jax

    load = os.getloadavg()
    return (
        f"# {title}\n# jax {jax.__version__}, devices {len(jax.devices())}, cores "
        f"{os.cpu_count()}, load {load[0]:.2f}, OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, SPMD_BACKEND="
        f"{config.env('SPMD_BACKEND')}, SPMD_LOCAL_MODE="
        f"{config.env('SPMD_LOCAL_MODE') or '(auto)'}"
    )


def median_time(run: Callable[[], Any], repeat: int, number: int = 1) -> float:
    """Median over `repeat` samples of the mean time of `number` calls, in seconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


# A BLAS's idle worker threads spin for up to ~0.1 s after a multi-threaded call (OpenBLAS:
# 2^28 cycles): the next run measured would share a core with them. JAX's 2x4 block step
# measured 28 ms right after ours against 22 ms alone, so samples start this long apart.
SETTLE_SECONDS = 0.2


def interleaved(
    runs: dict[str, Callable[[], Any]], repeat: int, number: int = 1, settle: float = SETTLE_SECONDS
) -> dict[str, float]:
    """Median times of several runs measured alternately (fair on a shared machine). Each
    sample starts `settle` seconds after the previous one ended and after one untimed call,
    so it times the run's own steady state (threads awake, caches warm), not its neighbour's
    leftovers."""
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            if settle:
                time.sleep(settle)
                run()
            start = time.perf_counter()
            for _ in range(number):
                run()
            samples[name].append((time.perf_counter() - start) / number)
    return {k: statistics.median(v) for k, v in samples.items()}


def rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# -- MLP: batch on data, hidden column- then row-parallel on model ------------------------

MLP_SPECS: dict[str, Spec] = {"w1": (None, "model"), "b1": ("model",), "w2": ("model", None)}
BATCH_SPEC: Spec = ("data",)


def mlp_params(d_in: int, d_hidden: int, d_out: int) -> dict[str, np.ndarray]:
    return {
        "w1": rand((d_in, d_hidden), 1, d_in**-0.5),
        "b1": rand((d_hidden,), 2, 0.1),
        "w2": rand((d_hidden, d_out), 3, d_hidden**-0.5),
    }


def mlp_loss(fw: Framework) -> Callable[..., Any]:
    np_, nn_ = fw.np, fw.nn

    def loss(params: dict[str, Any], x: Any, y: Any) -> Any:
        hidden = nn_.gelu(x @ params["w1"] + params["b1"])
        return np_.mean((hidden @ params["w2"] - y) ** 2)

    return loss


# -- transformer block: attention (heads on model) + MLP (hidden on model) + layernorm ----

BLOCK_SPECS: dict[str, Spec] = {
    "wq": (None, "model"),
    "wk": (None, "model"),
    "wv": (None, "model"),
    "wo": ("model",),
    "w1": (None, "model"),
    "w2": ("model", None),
    "g1": (),
    "b1": (),
    "g2": (),
    "b2": (),
}


def block_params(d_model: int, heads: int, d_head: int, d_ff: int) -> dict[str, np.ndarray]:
    s = d_model**-0.5
    return {
        "wq": rand((d_model, heads, d_head), 11, s),
        "wk": rand((d_model, heads, d_head), 12, s),
        "wv": rand((d_model, heads, d_head), 13, s),
        "wo": rand((heads, d_head, d_model), 14, (heads * d_head) ** -0.5),
        "w1": rand((d_model, d_ff), 15, s),
        "w2": rand((d_ff, d_model), 16, d_ff**-0.5),
        "g1": np.ones(d_model, np.float32),
        "b1": np.zeros(d_model, np.float32),
        "g2": np.ones(d_model, np.float32),
        "b2": np.zeros(d_model, np.float32),
    }


def layer_norm(np_: Any, x: Any, gamma: Any, beta: Any) -> Any:
    mean = np_.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = np_.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np_.sqrt(var + 1e-5) * gamma + beta


def attention(fw: Framework, x: Any, p: dict[str, Any]) -> Any:
    np_ = fw.np
    q = np_.einsum("btd,dhk->bhtk", x, p["wq"])
    k = np_.einsum("btd,dhk->bhtk", x, p["wk"])
    v = np_.einsum("btd,dhk->bhtk", x, p["wv"])
    scale = float(p["wq"].shape[-1]) ** -0.5
    probs = fw.nn.softmax(np_.einsum("bhtk,bhsk->bhts", q, k) * scale, axis=-1)
    return np_.einsum("bhtk,hkd->btd", np_.einsum("bhts,bhsk->bhtk", probs, v), p["wo"])


def block_forward(fw: Framework) -> Callable[..., Any]:
    np_, nn_ = fw.np, fw.nn

    def forward(p: dict[str, Any], x: Any) -> Any:
        x = x + attention(fw, layer_norm(np_, x, p["g1"], p["b1"]), p)
        hidden = nn_.gelu(layer_norm(np_, x, p["g2"], p["b2"]) @ p["w1"])
        return x + hidden @ p["w2"]

    return forward


def block_loss(fw: Framework) -> Callable[..., Any]:
    forward = block_forward(fw)

    def loss(p: dict[str, Any], x: Any, y: Any) -> Any:
        return fw.np.mean((forward(p, x) - y) ** 2)

    return loss


def sgd_step(fw: Framework, loss: Callable[..., Any], lr: float = 0.1) -> Callable[..., Any]:
    def step(params: dict[str, Any], x: Any, y: Any) -> Any:
        value, grads = fw.value_and_grad(loss)(params, x, y)
        return fw.tree_map(lambda p, g: p - lr * g, params, grads), value

    return step


def mlp_inputs(
    batch: int,
    d_in: int,
    d_hidden: int,
    d_out: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    return mlp_params(d_in, d_hidden, d_out), rand((batch, d_in), 4), rand((batch, d_out), 5)


def block_inputs(
    batch: int,
    time_: int,
    d_model: int,
    heads: int,
    d_head: int,
    d_ff: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    return (
        block_params(d_model, heads, d_head, d_ff),
        rand((batch, time_, d_model), 6),
        rand((batch, time_, d_model), 7),
    )


def placed(
    fw: Framework,
    params: dict[str, np.ndarray],
    specs: dict[str, Spec],
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[dict[str, Any], Any, Any]:
    return fw.put_tree(params, specs), fw.put(x, BATCH_SPEC), fw.put(y, BATCH_SPEC)
