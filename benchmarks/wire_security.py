"""What the authenticated socket transport costs (issue 17): connection setup with and without
the HMAC handshake, and all_reduce time/busbw between two processes over loopback for the old
pickled-header wire (the commit before issue 17, loaded from git), the new binary header, and
the new header with a MAC on every message (SPMD_WIRE_MAC=1). Ratios come from one run.

    python benchmarks/wire_security.py [--max-mb 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from collectives import auth
from collectives.messages import Mailbox
from collectives.sockets import SocketChannel, SocketCommunicator

OLD_COMMIT = "f378e92"  # the last commit with the pickled header
SECRET = auth.new_secret().encode()


def old_transport() -> types.ModuleType:
    """collectives/sockets.py and messages.py as of OLD_COMMIT (written to a temp folder and
    imported from there), as one module."""
    if "old_sockets" in sys.modules:
        return sys.modules["old_sockets"]
    folder = Path(tempfile.mkdtemp(prefix="spmd-old-wire-"))
    for path, name in (("collectives/messages.py", "old_messages"),
                       ("collectives/sockets.py", "old_sockets")):
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:{path}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        (folder / f"{name}.py").write_text(
            text.replace("from collectives.messages", "from old_messages"))
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["old_sockets"]


def channel(variant: str, box):
    if variant == "old":
        return old_transport().SocketChannel(box, host="127.0.0.1", label="process")
    return SocketChannel(box, label="process", secret=SECRET, mac=variant == "mac")


def member(variant: str, rank: int, pipe, sizes: list[int], repeats: int) -> None:
    """One process: its channel's port out, the table in, then timed all_reduces."""
    if variant == "old":
        module = old_transport()
        box = module.Mailbox()
        chan, comm_class = channel(variant, box), module.SocketCommunicator
    else:
        box = Mailbox()
        chan, comm_class = channel(variant, box), SocketCommunicator
    pipe.send(chan.port)
    table = pipe.recv()
    chan.connect(table, me=rank)
    comm = comm_class(rank, (2,), ("x",), chan, box, [0, 1])
    times = {}
    for size in sizes:
        x = np.ones(size // 4, np.float32)
        for _ in range(2):
            comm.all_reduce(x, "x")
        best = float("inf")
        for _ in range(repeats):
            count = max(1, min(200, (64 << 20) // max(size, 1) // 8))
            start = time.perf_counter()
            for _ in range(count):
                comm.all_reduce(x, "x")
            best = min(best, (time.perf_counter() - start) / count)
        times[size] = best
    pipe.send(times)
    pipe.recv()
    chan.close()


def all_reduce_times(variant: str, sizes: list[int], repeats: int) -> dict[int, float]:
    context = mp.get_context("fork")
    pipes = [context.Pipe() for _ in range(2)]
    processes = [context.Process(target=member, args=(variant, r, pipes[r][1], sizes, repeats))
                 for r in range(2)]
    for process in processes:
        process.start()
    table = [("127.0.0.1", pipes[r][0].recv()) for r in range(2)]
    for r in range(2):
        pipes[r][0].send(table)
    results = [pipes[r][0].recv() for r in range(2)]
    for r in range(2):
        pipes[r][0].send("done")
    for process in processes:
        process.join(30)
    return {size: max(results[0][size], results[1][size]) for size in sizes}


def connection_setup(handshake: bool, count: int = 300) -> float:
    """Seconds per connect (+ handshake, both sides) on loopback; best of three batches."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = server.getsockname()[1]

    def serve() -> None:
        for _ in range(count * 3):
            connection, _ = server.accept()
            if handshake:
                auth.server_handshake(connection, SECRET)
            connection.close()

    thread = threading.Thread(target=serve)
    thread.start()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port)) as connection:
                if handshake:
                    auth.client_handshake(connection, SECRET, 0)
                else:
                    connection.sendall(b"x")
        best = min(best, (time.perf_counter() - start) / count)
    thread.join()
    server.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    plain, shaken = connection_setup(False), connection_setup(True)
    print(f"connection setup on loopback: plain connect {plain * 1e6:.0f} us, with the HMAC "
          f"handshake {shaken * 1e6:.0f} us (+{(shaken - plain) * 1e6:.0f} us per connection)")
    sizes = [1 << k for k in range(10, 31, 2) if (1 << k) <= options.max_mb * (1 << 20)]
    variants = ("old", "new", "mac")
    times = {v: all_reduce_times(v, sizes, options.repeats) for v in variants}
    print("all_reduce of float32 between 2 processes on loopback; busbw GB/s = 2(n-1)/n bytes/t")
    print(f"{'bytes':>10} " + " ".join(f"{v + ' us':>10} {'busbw':>6}" for v in variants)
          + f" {'new/old':>8} {'mac/new':>8}")
    for size in sizes:
        cells = " ".join(f"{times[v][size] * 1e6:>10.1f} {size / times[v][size] / 1e9:>6.3f}"
                         for v in variants)
        print(f"{size:>10} {cells} {times['new'][size] / times['old'][size]:>8.2f} "
              f"{times['mac'][size] / times['new'][size]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
