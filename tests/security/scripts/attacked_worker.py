"""One process of a tcp job under attack: starts the tcp runtime, prints "PORT <n>" (its socket),
waits SPMD_TEST_PAUSE seconds (the attacker's head start), then trains train_small.py and runs a
few all_reduces on the world, printing "ALLREDUCE <values>"."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from collectives.sockets import SocketCommunicator
from spmd import dispatch, distributed


def main() -> None:
    distributed.initialize()
    runtime = dispatch.current_runtime()
    print(f"PORT {runtime.channel.port}", flush=True)
    time.sleep(float(os.environ.get("SPMD_TEST_PAUSE", "1")))
    size, rank = distributed.process_count(), distributed.process_index()
    comm = SocketCommunicator(
        rank,
        (size,),
        ("x",),
        runtime.channel,
        runtime.mailbox,
        range(size),
        tag=("test", "attacked"),
    )  # an attacker can guess it
    for _ in range(20):
        total = comm.all_reduce(np.full(3, rank + 1.0), "x")
    print(f"ALLREDUCE {total.tolist()}", flush=True)
    script = REPO / "tests" / "runtimes" / "scripts" / "train_small.py"
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
