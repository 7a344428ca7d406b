"""A 4-stage pipeline trained 3 steps with 1F1B on a data x pipe mesh, then one GPipe forward
(spmd.pipeline); prints "RESULT loss=<x> checksum=<y>" (process 0 only).

Run: spmd-launch --mesh 2x4 --axes data,pipe [--runtime mpi|tcp|ray] pipeline_runtime.py
"""

from __future__ import annotations

import numpy as np

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, distributed

STEPS = 3


def stage(params, h):
    return snp.tanh(h @ params["w"] + params["b"])


def loss_fn(y, t):
    return snp.mean((y - t) ** 2)


def global_array(mesh, value, spec):
    sharding = NamedSharding(mesh, spec)
    return distributed.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def main() -> None:
    mesh = distributed.launch_mesh()
    stages = dict(mesh.shape)["pipe"]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((stages, 8, 8)) * 0.5).astype(np.float32)
    b = (rng.standard_normal((stages, 8)) * 0.1).astype(np.float32)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    params = {"w": global_array(mesh, w, P("pipe")), "b": global_array(mesh, b, P("pipe"))}
    xs = global_array(mesh, x, P("data"))
    ts = global_array(mesh, np.sin(x), P("data"))

    @spmd.jit
    def step(params, x, t):
        loss, grads = spmd.pipeline_value_and_grad(
            stage,
            loss_fn,
            params,
            x,
            t,
            num_microbatches=4,
            mesh=mesh,
            param_specs=P("pipe"),
            input_spec=P("data"),
        )
        return spmd.tree_map(lambda p, g: p - 0.5 * g, params, grads), loss

    @spmd.jit
    def forward_sum(params, x):
        y = spmd.pipeline(
            stage,
            params,
            x,
            num_microbatches=2,
            mesh=mesh,
            param_specs=P("pipe"),
            input_spec=P("data"),
        )
        return snp.sum(y) + sum(snp.sum(p) for p in spmd.tree_leaves(params))

    for _ in range(STEPS):
        params, loss = step(params, xs, ts)
    total = float(forward_sum(params, xs))
    if distributed.process_index() == 0:
        print(
            f"RESULT loss={float(loss):.9g} checksum={total:.9g} "
            f"processes={distributed.process_count()}",
            flush=True,
        )
    distributed.barrier()


if __name__ == "__main__":
    main()
