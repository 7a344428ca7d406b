"""XLA's own per-device memory analysis of the benchmarks/sim_models.py decoder, written in
JAX and compiled deviceless for a TPU topology (jax.experimental.topologies), set beside the
simulator's peak HBM for the same model, mesh and shardings.

Needs jax with libtpu (see benchmarks/sim_libtpu_estimates.py); one JSON line per run:
    /tmp/tpuenv/bin/python benchmarks/sim_xla_memory.py v5e:2x2 1b-2l >> xla.jsonl
Then, with spmd, the simulator's peak for every recorded line and the ratio:
    python -m benchmarks.sim_xla_memory --compare benchmarks/sim_xla_memory.jsonl
(the recorded lines: libtpu 0.0.42.1, CPU host; a compile takes ~10-17 minutes there)
"""

from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

CONFIGS = {  # layers, d_model, heads, head_dim, d_ff, vocab, batch per device, seq
    "1b": (16, 2048, 16, 128, 7168, 32000, 1, 2048),
    "16b": (32, 4096, 64, 128, 28672, 32000, 6, 2048),
    "1b-2l": (2, 2048, 16, 128, 7168, 32000, 1, 2048),  # 1B's layer, 2 of them (compiles fast)
    "1b-2l-b4": (2, 2048, 16, 128, 7168, 32000, 4, 2048),  # activations outweigh weights
    "small": (2, 1024, 8, 128, 4096, 32000, 2, 1024),
    "16b-2l": (2, 4096, 64, 128, 28672, 32000, 1, 2048),  # 16B's layer, 2 of them
}


def rms_norm(x, scale):
    x32 = x.astype(jnp.float32)
    norm = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (norm * scale).astype(x.dtype)


def layer(x, w):
    c = {k: v.astype(jnp.bfloat16) for k, v in w.items()}
    h = rms_norm(x, c["norm1"])
    q = jnp.einsum("bsd,dnh->bsnh", h, c["wq"])
    k = jnp.einsum("bsd,dnh->bsnh", h, c["wk"])
    v = jnp.einsum("bsd,dnh->bsnh", h, c["wv"])
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + jnp.einsum("bsnh,nhd->bsd", a, c["wo"])
    h = rms_norm(x, c["norm2"])
    gate = jax.nn.silu(jnp.einsum("bsd,df->bsf", h, c["w1"]))
    up = jnp.einsum("bsd,df->bsf", h, c["w3"])
    return x + jnp.einsum("bsf,fd->bsd", gate * up, c["w2"]), None


def loss(params, x):
    stacked = {k: params[k] for k in ("wq", "wk", "wv", "wo", "w1", "w3", "w2", "norm1", "norm2")}
    y, _ = jax.lax.scan(jax.checkpoint(layer), x, stacked)
    y = rms_norm(y, params["final_norm"].astype(jnp.bfloat16))
    logits = jnp.einsum("bsd,dv->bsv", y, params["unembed"].astype(jnp.bfloat16))
    logits = logits.astype(jnp.float32)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])


def step(params, m, v, x):
    value, grads = jax.value_and_grad(loss)(params, x)
    m = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
    v = jax.tree.map(lambda a, g: 0.95 * a + 0.05 * g * g, v, grads)
    params = jax.tree.map(
        lambda p, a, b: p - 1e-4 * (a / (jnp.sqrt(b) + 1e-8) + 0.1 * p), params, m, v
    )
    return value, params, m, v


def main(topology: str, name: str) -> None:
    layers, d, n, h, f, vocab, per_device, seq = CONFIGS[name]
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    devices = np.array(topo.devices).reshape(-1)
    mesh = jax.sharding.Mesh(devices, ("data",))
    shapes = {
        "wq": (layers, d, n, h),
        "wk": (layers, d, n, h),
        "wv": (layers, d, n, h),
        "wo": (layers, n, h, d),
        "w1": (layers, d, f),
        "w3": (layers, d, f),
        "w2": (layers, f, d),
        "norm1": (layers, d),
        "norm2": (layers, d),
        "unembed": (d, vocab),
        "final_norm": (d,),
    }
    specs = {
        "wq": P(None, "data"),
        "wk": P(None, "data"),
        "wv": P(None, "data"),
        "wo": P(None, None, None, "data"),
        "w1": P(None, "data"),
        "w3": P(None, "data"),
        "w2": P(None, None, "data"),
        "norm1": P(),
        "norm2": P(),
        "unembed": P("data"),
        "final_norm": P(),
    }
    params = {
        k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, specs[k]))
        for k, s in shapes.items()
    }
    x = jax.ShapeDtypeStruct(
        (per_device * devices.size, seq, d), jnp.bfloat16, sharding=NamedSharding(mesh, P("data"))
    )
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, params, params, x).compile()
    mem = compiled.memory_analysis()
    peak = getattr(mem, "peak_memory_in_bytes", 0) or (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    print(
        json.dumps(
            {
                "topology": topology,
                "model": name,
                "argument": mem.argument_size_in_bytes,
                "output": mem.output_size_in_bytes,
                "alias": mem.alias_size_in_bytes,
                "temp": mem.temp_size_in_bytes,
                "peak": peak,
                "chips": int(math.prod(devices.shape)),
            }
        )
    )


def simulated_peak(name: str, chips: int, chip: str = "v5e") -> int:
    """The simulator's peak HBM per device for CONFIGS[name], FSDP over `chips`."""
    import spmd
    import spmd.sim
    from benchmarks.sim_models import Model, abstract_args, train_step

    layers, d, n, h, f, vocab, per_device, seq = CONFIGS[name]
    # jax.nn.dot_product_attention compiles deviceless to XLA's einsum-softmax-einsum (the
    # S x S scores in HBM), not a flash kernel: simulate the same unfused attention.
    model = Model(name, layers, d, n, n, h, f, vocab, per_device, seq, fused_attention=False)
    mesh = spmd.make_mesh((chips,), ("data",), device=f"tpu-sim:{chip}")
    step = spmd.jit(train_step(model), donate_argnums=(0, 1, 2))
    report = spmd.sim.simulate(step, *abstract_args(model, mesh), check_memory=False)
    return int(report.peak_memory_bytes)


def compare(path: str) -> None:
    """A markdown row per recorded XLA line: XLA's peak, ours, their ratio."""
    print("| model | topology | chips | XLA peak GiB | simulated GiB | sim / XLA |")
    print("|---|---|---:|---:|---:|---:|")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.startswith("{")]
    for row in rows:
        ours = simulated_peak(row["model"], row["chips"], row["topology"].split(":")[0])
        print(
            f"| {row['model']} | {row['topology']} | {row['chips']} | "
            f"{row['peak'] / 2**30:.3f} | {ours / 2**30:.3f} | {ours / row['peak']:.2f} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2])
    else:
        main(
            sys.argv[1] if len(sys.argv) > 1 else "v5e:16x16",
            sys.argv[2] if len(sys.argv) > 2 else "1b",
        )
