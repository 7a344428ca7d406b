"""One process of a tcp-runtime test, started with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT:
`python tcp_worker.py collectives|train|collectives+train [train_small.py args]`.

Prints "STARTED rank=.. count=.. local=.. kind=.." once the runtime is up.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent.parent / "collectives"))

from cases import MESHES, run_checks

from collectives.sockets import SocketCommunicator
from spmd import dispatch, distributed


def run_collectives() -> None:
    """Every collective case on every mesh of the world's size, straight on the sockets."""
    runtime = dispatch.current_runtime()
    size = distributed.process_count()
    meshes = MESHES if size == 8 else [((4,), ("x",)), ((2, 2), ("a", "b"))]
    for mesh_shape, axis_names in meshes:
        comm = SocketCommunicator(
            distributed.process_index(),
            mesh_shape,
            axis_names,
            runtime.channel,
            runtime.mailbox,
            range(size),
            tag=("test", mesh_shape),
        )
        checks, failures = run_checks(comm)
        for failure in failures:
            print(f"FAIL {mesh_shape} {failure}", flush=True)
        print(
            f"RESULT {mesh_shape} rank={comm.rank} checks={checks} failures={len(failures)}",
            flush=True,
        )


def main(argv: list[str]) -> None:
    distributed.initialize()  # no argument: the torchrun variables choose the tcp runtime
    local = [d.id for d in distributed.local_devices()]
    print(
        f"STARTED rank={distributed.process_index()} count={distributed.process_count()} "
        f"local={local} kind={distributed.runtime_kind()}",
        flush=True,
    )
    if "collectives" in argv[0]:
        run_collectives()
    if "train" not in argv[0]:
        return
    script = str(HERE / "train_small.py")
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
