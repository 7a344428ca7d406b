"""A small MLP trained for STEPS steps on the launch mesh (data, model), its parameters sharded
over 'model'; every process saves its shards of a checkpoint after every step and a restarted
job resumes from the latest one, resharded onto whatever mesh it now has:
`python train_elastic.py CHECKPOINT_DIR [--kill-at S]`. Rank 0 prints "MESH <shape>
processes=<n>", "RESUMED step=<k>" and "LOSS step=<i> <x>".

--kill-at S: on a first attempt (SPMD_RESTART unset) the last process SIGKILLs itself after
computing step S, before saving it, as a lost host would.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

from spmd import NamedSharding, P, checkpoint, distributed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when run with runpy
from train_resume import STEPS, placed, train_step  # the same model and step

SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None)}


def main(argv: list[str]) -> None:
    directory = argv[0]
    kill_at = int(argv[argv.index("--kill-at") + 1]) if "--kill-at" in argv else None
    mesh = distributed.launch_mesh()
    rank, count = distributed.process_index(), distributed.process_count()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = np.sin(x[:, :4]).astype(np.float32)
    start = checkpoint.latest_step(directory) or 0
    if start:
        params = checkpoint.restore(
            directory,
            step=start,
            shardings={name: NamedSharding(mesh, spec) for name, spec in SPECS.items()},
        )
    else:
        initial = {
            "w1": (rng.standard_normal((16, 32)) / 4).astype(np.float32),
            "b1": np.zeros(32, np.float32),
            "w2": (rng.standard_normal((32, 4)) / 6).astype(np.float32),
        }
        params = {name: placed(mesh, value, SPECS[name]) for name, value in initial.items()}
    if rank == 0:
        print(f"MESH {'x'.join(map(str, mesh.axis_sizes))} processes={count}", flush=True)
        print(f"RESUMED step={start}", flush=True)
    x_array, y_array = placed(mesh, x, P("data", None)), placed(mesh, y, P("data", None))
    for step in range(start, STEPS):
        params, loss = train_step(params, x_array, y_array)
        if rank == 0:
            print(f"LOSS step={step} {float(loss):.9g}", flush=True)
        if step == kill_at and rank == count - 1 and not os.environ.get("SPMD_RESTART"):
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save(directory, params, step=step + 1, keep=2)


if __name__ == "__main__":
    main(sys.argv[1:])
