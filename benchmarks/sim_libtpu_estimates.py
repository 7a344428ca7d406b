"""libtpu's own per-op cost estimates (deviceless compile, `estimated_cycles` of each fusion
in the optimized HLO) for the op classes the simulator prices, written as JSON.

Needs jax with libtpu (a separate environment: libtpu tries to open a TPU when jax starts):
    python -m venv /tmp/tpuenv && /tmp/tpuenv/bin/pip install jax libtpu
    /tmp/tpuenv/bin/python benchmarks/sim_libtpu_estimates.py v5e:4x4 > v5e.json
No TPU is needed: jax.experimental.topologies compiles for the topology on the CPU host.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

CLOCK_HZ = {"v4": 1.05e9, "v5e": 1.5e9, "v5p": 1.75e9, "v6e": 1.75e9}  # configs/chips/*.toml


def estimated_cycles(fun, *args) -> int:
    """Sum of estimated_cycles over the compiled program's fusions."""
    text = jax.jit(fun).lower(*args).compile().as_text()
    return sum(int(c) for c in re.findall(r'"estimated_cycles":"?(\d+)', text))


def main(topology: str) -> None:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    mesh = jax.sharding.Mesh(np.array(topo.devices).reshape(-1), ("d",))

    def sds(shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))

    rows = []
    for m, n, k in [
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (4096, 4096, 4096),
        (8192, 8192, 8192),
        (8192, 8192, 1024),
        (16384, 4096, 4096),
        (16384, 128, 4096),
        (16384, 4096, 128),
        (200, 4096, 4096),
        (4096, 4096, 200),
    ]:
        cyc = estimated_cycles(lambda a, b: a @ b, sds((m, k)), sds((k, n)))
        rows.append({"kind": "matmul", "m": m, "n": n, "k": k, "dtype": "bf16", "cycles": cyc})
    for size in [1 << 16, 1 << 20, 1 << 24, 1 << 26]:
        for dtype, name in [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")]:
            shape = (size // 1024, 1024)
            rows.append(
                {
                    "kind": "add",
                    "size": size,
                    "dtype": name,
                    "cycles": estimated_cycles(
                        lambda a, b: a + b, sds(shape, dtype), sds(shape, dtype)
                    ),
                }
            )
            rows.append(
                {
                    "kind": "exp",
                    "size": size,
                    "dtype": name,
                    "cycles": estimated_cycles(lambda a: jnp.exp(a), sds(shape, dtype)),
                }
            )
            rows.append(
                {
                    "kind": "reduce",
                    "size": size,
                    "dtype": name,
                    "cycles": estimated_cycles(lambda a: a.sum(-1), sds(shape, dtype)),
                }
            )
            rows.append(
                {
                    "kind": "transpose",
                    "size": size,
                    "dtype": name,
                    "cycles": estimated_cycles(lambda a: a.T + 1, sds(shape, dtype)),
                }
            )
    chip = topology.split(":")[0]
    # v4's deviceless topology lists each TensorCore as a device (num_cores 1): its
    # estimates are half a chip's (benchmarks/sim_pod_scale.py LIBTPU_DEVICE_SHARE)
    meta = {"devices": len(topo.devices), "cores_per_device": topo.devices[0].num_cores}
    json.dump(
        {"topology": topology, "clock_hz": CLOCK_HZ[chip], **meta, "rows": rows},
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "v5e:2x2")
