"""Every process of a multi-controller job saves one sharded tree per step into one checkpoint
folder (spmd.checkpoint.save from each process), and checks what it restores against the values
it saved, bit for bit: `python save_sharded.py DIR [--steps K]`, rank 0 prints "SAVED step=<s>"
and "RESUMED step=<s>".

Faults for tests (a first attempt only, SPMD_RESTART unset): process 2 is SIGKILLed after
writing its first shard file of step 3; on the first restart (SPMD_RESTART=1) process 0 is
SIGKILLed after writing step 4's index.json, before renaming the folder into place. Each
restart must find the step before the killed one, whole.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from spmd import NamedSharding, P, checkpoint, checkpoint_files, distributed

KEEP = 2


def values(step: int) -> dict:
    """The tree saved at `step`: float, bfloat16-free integer and scalar leaves of odd sizes."""
    rng = np.random.default_rng(step)
    return {
        "w": rng.standard_normal((8, 6)).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
        "r": rng.integers(-9, 9, (3, 5)).astype(np.int32),
        "n": np.arange(step, step + 4, dtype=np.float64),
        "step": np.int64(step),
    }


SPECS = {"w": P("data", "model"), "b": P("model"), "r": P()}
RESHARDED = {"w": P("model", "data"), "b": P(("data", "model")), "r": P("data")}


def placed(mesh, tree: dict, specs: dict) -> dict:
    out = dict(tree)
    for name, spec in specs.items():
        value = tree[name]
        out[name] = distributed.make_array_from_callback(
            value.shape, NamedSharding(mesh, spec), lambda index, v=value: v[index]
        )
    return out


def check(restored: dict, step: int) -> None:
    """Each shard this process holds equals the saved values, bit for bit."""
    want = values(step)
    for name, value in restored.items():
        if name in SPECS:
            for shard in value.addressable_shards:
                got = np.asarray(shard.data)
                assert got.tobytes() == want[name][shard.index].tobytes(), (name, step)
        else:
            assert np.asarray(value).tobytes() == np.asarray(want[name]).tobytes(), (name, step)


def kill_during_save(rank: int, after: str) -> None:
    """This process dies (SIGKILL) right after writing a file whose name starts with `after`."""
    write = checkpoint_files.write_durably

    def write_then_die(path: str, payload: bytes) -> None:
        write(path, payload)
        if os.path.basename(path).startswith(after):
            os.kill(os.getpid(), signal.SIGKILL)

    if distributed.process_index() == rank:
        checkpoint_files.write_durably = write_then_die


def main(argv: list[str]) -> None:
    directory = argv[0]
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 6
    mesh = distributed.launch_mesh()
    rank = distributed.process_index()
    start = checkpoint.latest_step(directory) or 0
    if start:
        target = placed(mesh, values(start), SPECS)
        check(checkpoint.restore(directory, target), start)
        # onto other shardings than the ones saved: the reader reshards
        check(checkpoint.restore(directory, placed(mesh, values(start), RESHARDED)), start)
    if rank == 0:
        print(f"RESUMED step={start}", flush=True)
    attempt = os.environ.get("SPMD_RESTART", "")
    for step in range(start + 1, steps + 1):
        if step == 3 and not attempt:
            kill_during_save(2, "leaf_")
        if step == 4 and attempt == "1":
            kill_during_save(0, "index.json")
        checkpoint.save(directory, placed(mesh, values(step), SPECS), step, keep=KEEP)
        if rank == 0:
            print(f"SAVED step={step}", flush=True)
    check(checkpoint.restore(directory, placed(mesh, values(steps), SPECS)), steps)


if __name__ == "__main__":
    main(sys.argv[1:])
