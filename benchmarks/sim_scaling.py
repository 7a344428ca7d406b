"""Time to simulate one transformer training step on TPU slices of 8..4096 chips (abstract
mode), and the simulator's overhead in numerics mode on a small mesh.

    python -m benchmarks.sim_scaling            # all rows
    python -m benchmarks.sim_scaling --quick    # 8 and 256 chips only, no numerics row

The model (also used by tests/backends/tpu_sim): spmd.numpy + spmd.lax.scan over stacked
layers, Megatron sharding (q/k/v and w1 column-parallel on 'model', wo and w2 row-parallel),
batch on 'data', one value_and_grad + SGD step.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import spmd
import spmd.numpy as snp
import spmd.sim
from spmd import lax
from spmd.sharding import NamedSharding, P


@dataclass(frozen=True)
class Config:
    """Transformer sizes: layers, model width, heads, MLP width, batch, sequence length."""

    layers: int = 20
    d_model: int = 2048
    heads: int = 16
    d_ff: int = 8192
    batch: int = 16
    seq: int = 2048
    dtype: str = "bfloat16"

    @property
    def params(self) -> int:
        """Parameter count (4 attention matrices and 2 MLP matrices per layer)."""
        return self.layers * (4 * self.d_model**2 + 2 * self.d_model * self.d_ff)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        l, d, h, f = self.layers, self.d_model, self.heads, self.d_ff
        k = d // h
        return {
            "wq": (l, d, h, k),
            "wk": (l, d, h, k),
            "wv": (l, d, h, k),
            "wo": (l, h, k, d),
            "w1": (l, d, f),
            "w2": (l, f, d),
        }


SPECS = {
    "wq": P(None, None, "model"),
    "wk": P(None, None, "model"),
    "wv": P(None, None, "model"),
    "wo": P(None, "model"),
    "w1": P(None, None, "model"),
    "w2": P(None, "model"),
}


def layer(x: Any, w: dict[str, Any]) -> tuple[Any, None]:
    """One pre-norm transformer block (attention over heads, then a GELU MLP)."""
    h = spmd.nn.standardize(x)
    q = snp.einsum("bsd,dhk->bshk", h, w["wq"])
    k = snp.einsum("bsd,dhk->bshk", h, w["wk"])
    v = snp.einsum("bsd,dhk->bshk", h, w["wv"])
    scores = snp.einsum("bshk,bthk->bhst", q, k)
    attention = snp.einsum("bhst,bthk->bshk", spmd.nn.softmax(scores, axis=-1), v)
    x = x + snp.einsum("bshk,hkd->bsd", attention, w["wo"])
    h = spmd.nn.standardize(x)
    u = spmd.nn.gelu(snp.einsum("bsd,df->bsf", h, w["w1"]))
    return x + snp.einsum("bsf,fd->bsd", u, w["w2"]), None


def loss(params: dict[str, Any], x: Any) -> Any:
    y, _ = lax.scan(layer, x, params)
    return snp.mean(snp.square(y.astype("float32")))


def train_step(params: dict[str, Any], x: Any) -> tuple[Any, dict[str, Any]]:
    """value_and_grad of the loss, then SGD."""
    value, grads = spmd.value_and_grad(loss)(params, x)
    new = spmd.tree_map(lambda p, g: (p - 0.01 * g).astype(p.dtype), params, grads)
    return value, new


def abstract_inputs(mesh: spmd.Mesh, config: Config) -> tuple[dict[str, Any], Any]:
    """ShapeDtypeStructs of the params (Megatron specs) and a batch sharded on 'data'."""
    params = {
        name: spmd.ShapeDtypeStruct(shape, config.dtype, NamedSharding(mesh, SPECS[name]))
        for name, shape in config.shapes().items()
    }
    x = spmd.ShapeDtypeStruct(
        (config.batch, config.seq, config.d_model), config.dtype, NamedSharding(mesh, P("data"))
    )
    return params, x


def real_inputs(mesh: spmd.Mesh, config: Config, seed: int = 0) -> tuple[dict[str, Any], Any]:
    """Random params and batch placed on the mesh (numerics mode)."""
    rng = np.random.default_rng(seed)
    params, x = abstract_inputs(mesh, config)

    def put(s: spmd.ShapeDtypeStruct) -> Any:
        value = (rng.standard_normal(s.shape) * 0.05).astype(np.float32)
        return spmd.device_put(value.astype(spmd.dtypes.to_numpy(s.dtype)), s.sharding)

    return {k: put(v) for k, v in params.items()}, put(x)


SCALES = [  # (chips, chip, mesh shape (data, model))
    (8, "v5e", (2, 4)),
    (64, "v5e", (8, 8)),
    (256, "v5e", (16, 16)),
    (4096, "v4", (256, 16)),
]


def time_abstract_step(chip: str, shape: tuple[int, int], config: Config) -> dict[str, Any]:
    """Seconds to trace + partition + simulate one step, and the report."""
    mesh = spmd.make_mesh(shape, ("data", "model"), device=f"tpu-sim:{chip}")
    start = time.perf_counter()
    params, x = abstract_inputs(mesh, config)
    lowered = spmd.jit(train_step).lower(params, x)
    traced = time.perf_counter()
    compiled = lowered.compile()
    partitioned = time.perf_counter()
    report = compiled.simulate(check_memory=False)  # peak HBM is a column, not a gate
    done = time.perf_counter()
    return {
        "trace_s": traced - start,
        "partition_s": partitioned - traced,
        "simulate_s": done - partitioned,
        "total_s": done - start,
        "report": report,
    }


def numerics_overhead(repeats: int = 5) -> dict[str, float]:
    """Small model on a 2x4 mesh: best per-step seconds on a cpu mesh vs a tpu-sim mesh
    (calls interleaved, as the machine is shared), and the one-off simulation of the step."""
    config = Config(layers=2, d_model=64, heads=4, d_ff=128, batch=4, seq=16, dtype="float32")
    runs = {}
    for device in ("cpu", "tpu-sim:v5e"):
        mesh = spmd.make_mesh((2, 4), ("data", "model"), device=device)
        params, x = real_inputs(mesh, config)
        step = spmd.jit(train_step)
        spmd.block_until_ready(step(params, x))
        runs[device] = (step, params, x)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for device, (step, params, x) in runs.items():
            start = time.perf_counter()
            spmd.block_until_ready(step(params, x))
            best[device] = min(best[device], time.perf_counter() - start)
    step, params, x = runs["tpu-sim:v5e"]
    compiled = step.lower(params, x).compile()
    start = time.perf_counter()
    compiled.simulate(fuse=False)  # an uncached simulation of the same program
    best["simulate_once"] = time.perf_counter() - start
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    config = Config()
    scales = [s for s in SCALES if not args.quick or s[0] in (8, 256)]
    print(f"transformer: {config.params / 1e9:.2f}B params, {config}")
    print(
        f"{'chips':>6} {'chip':>4} {'mesh':>8} {'trace s':>8} {'partition s':>11} "
        f"{'simulate s':>10} {'total s':>8} {'step ms':>9} {'MFU':>6} {'HBM GiB':>8}"
    )
    for chips, chip, shape in scales:
        batch = max(16, 2 * shape[0])
        row = time_abstract_step(chip, shape, Config(batch=batch))
        r = row["report"]
        print(
            f"{chips:>6} {chip:>4} {'x'.join(map(str, shape)):>8} {row['trace_s']:>8.2f} "
            f"{row['partition_s']:>11.2f} {row['simulate_s']:>10.2f} {row['total_s']:>8.2f} "
            f"{r.step_time_s * 1e3:>9.1f} {r.mfu * 100:>5.1f}% "
            f"{r.peak_memory_bytes / 2**30:>8.2f}"
        )
    if not args.quick:
        overhead = numerics_overhead()
        print(
            f"numerics mode, 2x4 mesh, small model: cpu {overhead['cpu'] * 1e3:.1f} ms/step, "
            f"tpu-sim {overhead['tpu-sim:v5e'] * 1e3:.1f} ms/step (report cached per "
            f"program), one uncached simulation {overhead['simulate_once'] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
