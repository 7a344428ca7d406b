"""A small MLP trained for STEPS steps with data parallelism, saving a checkpoint after every
step (process 0; the parameters are replicated) and resuming from the latest one when started
again: `python train_resume.py CHECKPOINT_DIR [--fail-at S]`. Prints "RESUMED step=<k>" and
"LOSS step=<i> <x>" (process 0). --fail-at S: process 1 of a first attempt (SPMD_RESTART unset)
raises after step S, as a crashing host would; spmd-launch --max-restarts starts it again.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, checkpoint, distributed

STEPS = 8


def loss_fn(params: dict, x: spmd.Array, y: spmd.Array) -> spmd.Array:
    hidden = snp.tanh(x @ params["w1"] + params["b1"])
    return snp.mean((hidden @ params["w2"] - y) ** 2)


@spmd.jit
def train_step(params: dict, x: spmd.Array, y: spmd.Array) -> tuple[dict, spmd.Array]:
    loss, grads = spmd.value_and_grad(loss_fn)(params, x, y)
    return spmd.tree_map(lambda p, g: p - 0.2 * g, params, grads), loss


def placed(mesh: spmd.Mesh, value: np.ndarray, spec: P) -> spmd.Array:
    sharding = NamedSharding(mesh, spec)
    return distributed.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def main(argv: list[str]) -> None:
    directory = argv[0]
    fail_at = int(argv[argv.index("--fail-at") + 1]) if "--fail-at" in argv else None
    mesh = distributed.launch_mesh()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = np.sin(x[:, :4]).astype(np.float32)
    start = checkpoint.latest_step(directory) or 0
    if start:
        initial = checkpoint.restore(directory, step=start)
    else:
        initial = {
            "w1": (rng.standard_normal((16, 32)) / 4).astype(np.float32),
            "b1": np.zeros(32, np.float32),
            "w2": (rng.standard_normal((32, 4)) / 6).astype(np.float32),
        }
    rank = distributed.process_index()
    if rank == 0:
        print(f"RESUMED step={start}", flush=True)
    params = {name: placed(mesh, value, P()) for name, value in initial.items()}
    x_array, y_array = placed(mesh, x, P("data", None)), placed(mesh, y, P("data", None))
    for step in range(start, STEPS):
        params, loss = train_step(params, x_array, y_array)
        if rank == 0:
            print(f"LOSS step={step} {float(loss):.9g}", flush=True)
            host = {
                name: np.asarray(value.addressable_shards[0].data) for name, value in params.items()
            }
            checkpoint.save(directory, host, step=step + 1, keep=2)
        first_attempt = not os.environ.get("SPMD_RESTART")
        if step == fail_at and rank == 1 and first_attempt:
            raise RuntimeError(f"deliberate failure after step {step}")
        distributed.barrier()  # every step's checkpoint is written before the next starts


if __name__ == "__main__":
    main(sys.argv[1:])
