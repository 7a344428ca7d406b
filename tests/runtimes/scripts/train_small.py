"""A small MLP trained for 10 steps with data parallelism over 'data' and tensor parallelism
over 'model'; prints one line "RESULT loss=<x> checksum=<y>" (rank 0 only under MPI); fault modes for tests.

Run: spmd-launch --mesh 2x4 --axes data,model [--runtime mpi|ray] tests/runtimes/scripts/train_small.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, distributed

STEPS = 10


def loss_fn(params: dict, x: spmd.Array, y: spmd.Array) -> spmd.Array:
    hidden = snp.tanh(x @ params["w1"] + params["b1"])
    return snp.mean((hidden @ params["w2"] - y) ** 2)


@spmd.jit
def train_step(params: dict, x: spmd.Array, y: spmd.Array) -> tuple[dict, spmd.Array]:
    loss, grads = spmd.value_and_grad(loss_fn)(params, x, y)
    return spmd.tree_map(lambda p, g: p - 0.2 * g, params, grads), loss


@spmd.jit
def checksum(params: dict) -> spmd.Array:
    return sum(snp.sum(p * (i + 1)) for i, p in enumerate(params.values()))


def global_array(mesh: spmd.Mesh, value: np.ndarray, spec: P) -> spmd.Array:
    """Every process knows the global value; each builds only the shards it holds."""
    sharding = NamedSharding(mesh, spec)
    return distributed.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def main() -> None:
    mesh = distributed.launch_mesh()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = np.sin(x[:, :4]).astype(np.float32)
    params = {
        "w1": global_array(
            mesh, (rng.standard_normal((16, 32)) / 4).astype(np.float32), P(None, "model")
        ),
        "b1": global_array(mesh, np.zeros(32, np.float32), P("model")),
        "w2": global_array(
            mesh, (rng.standard_normal((32, 4)) / 6).astype(np.float32), P("model", None)
        ),
    }
    x_sharding = NamedSharding(mesh, P("data", None))
    x_local = x[distributed.process_local_slices(x_sharding, x.shape)]
    x_array = distributed.make_array_from_process_local_data(x_sharding, x_local, x.shape)
    y_array = global_array(mesh, y, P("data", None))
    for _ in range(STEPS):
        params, loss = train_step(params, x_array, y_array)
    total = float(checksum(params))
    if distributed.process_index() == 0:
        print(
            f"RESULT loss={float(loss):.9g} checksum={total:.9g} "
            f"processes={distributed.process_count()} mesh={dict(mesh.shape)}",
            flush=True,
        )
    if distributed.runtime_kind() == "ray":  # where each device's actor ran (multi-host tests)
        from spmd import dispatch

        hosts = [host for host, _ in dispatch.current_runtime().actor_info]
        print(f"ACTOR HOSTS {','.join(hosts)}", flush=True)
    faults(sys.argv[1:])


def faults(argv: list[str]) -> None:
    """--fail-on-rank R: process R raises; --wait: every process prints its pid and waits
    (for a test to kill one, or to interrupt the launcher). Other arguments are ignored."""
    rank = distributed.process_index()
    if "--fail-on-rank" in argv:
        distributed.barrier()  # every process has trained (and rank 0 printed) before one raises
        if rank == int(argv[argv.index("--fail-on-rank") + 1]):
            raise ValueError(f"deliberate failure on process {rank}")
    if "--wait" in argv:
        print(f"WAITING rank={rank} pid={os.getpid()}", flush=True)
        time.sleep(60)
    distributed.barrier()


if __name__ == "__main__":
    main()
