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
    for path, name in (
        ("collectives/messages.py", "old_messages"),
        ("collectives/sockets.py", "old_sockets"),
    ):
        text = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:{path}"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (folder / f"{name}.py").write_text(
            text.replace("from collectives.messages", "from old_messages")
        )
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["old_sockets"]


def channel(variant: str, box):
    if variant == "old":
        return old_transport().SocketChannel(box, host="127.0.0.1", label="process")
    return SocketChannel(box, label="process", secret=SECRET, mac=variant == "mac")


def member(variant: str, rank: int, pipe) -> None:
    """One process: its channel's port out, the table in, then all_reduces of the sizes the
    parent asks for, answering each with the best seconds per call."""
    if variant == "old":
        module = old_transport()
        box = module.Mailbox()
        chan, comm_class = channel(variant, box), module.SocketCommunicator
    else:
        box = Mailbox()
        chan, comm_class = channel(variant, box), SocketCommunicator
    pipe.send(chan.port)
    chan.connect(pipe.recv(), me=rank)
    comm = comm_class(rank, (2,), ("x",), chan, box, [0, 1])
    while (order := pipe.recv()) is not None:
        size, count = order
        x = np.ones(size // 4, np.float32)
        comm.all_reduce(x, "x")
        start = time.perf_counter()
        for _ in range(count):
            comm.all_reduce(x, "x")
        pipe.send((time.perf_counter() - start) / count)
    chan.close()


class Pair:
    """Two member processes of one variant, idle until asked to time a size."""

    def __init__(self, variant: str):
        context = mp.get_context("fork")
        self.pipes = [context.Pipe() for _ in range(2)]
        self.processes = [
            context.Process(target=member, args=(variant, r, self.pipes[r][1])) for r in range(2)
        ]
        for process in self.processes:
            process.start()
        table = [("127.0.0.1", self.pipes[r][0].recv()) for r in range(2)]
        for r in range(2):
            self.pipes[r][0].send(table)

    def time(self, size: int) -> float:
        count = max(1, min(100, (32 << 20) // max(size, 1) // 8))
        for r in range(2):
            self.pipes[r][0].send((size, count))
        return max(self.pipes[r][0].recv() for r in range(2))

    def close(self) -> None:
        for r in range(2):
            self.pipes[r][0].send(None)
        for process in self.processes:
            process.join(30)


def all_reduce_times(
    variants: tuple[str, ...],
    sizes: list[int],
    rounds: int,
) -> dict[str, dict[int, float]]:
    """Best of rounds per (variant, size); the variants take turns within each round, so a
    burst of load on this shared machine hits them alike."""
    pairs = {variant: Pair(variant) for variant in variants}
    best = {variant: dict.fromkeys(sizes, float("inf")) for variant in variants}
    for _ in range(rounds):
        for size in sizes:
            for variant, pair in pairs.items():
                best[variant][size] = min(best[variant][size], pair.time(size))
    for pair in pairs.values():
        pair.close()
    return best


def connection_setup(count: int = 100, rounds: int = 5) -> tuple[float, float]:
    """Seconds per connect on loopback (client and server side), plain and with the HMAC
    handshake; best of rounds, the two taking turns."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = server.getsockname()[1]
    plan = [handshake for _ in range(rounds) for handshake in (False, True)]

    def serve() -> None:
        for handshake in plan:
            for _ in range(count):
                connection, _ = server.accept()
                if handshake:
                    auth.server_handshake(connection, SECRET)
                else:
                    connection.recv(1)
                connection.close()

    thread = threading.Thread(target=serve)
    thread.start()
    best = {False: float("inf"), True: float("inf")}
    for handshake in plan:
        start = time.perf_counter()
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port)) as connection:
                if handshake:
                    auth.client_handshake(connection, SECRET, 0)
                else:
                    connection.sendall(b"x")
        best[handshake] = min(best[handshake], (time.perf_counter() - start) / count)
    thread.join()
    server.close()
    return best[False], best[True]


def header_costs(count: int = 20000) -> tuple[float, float]:
    """Seconds to encode and decode one message's header (no network): the old pickled
    (key, dtype, shape) against the new fixed binary header; best of three."""
    import pickle

    from collectives import wire

    value = np.ones((64, 32), np.float32)
    tag = ((("data", "model"), (2, 4), tuple(range(8))), 17, 3)

    def old() -> None:
        pickle.loads(pickle.dumps((tag, value.dtype, value.shape)))

    key = (wire.collective_id(tag[0]), 17, 3)

    def new() -> None:
        head, _ = wire.encode_array(wire.DATA, 3, key, value)
        offset = [0]

        def read(n: int) -> bytes:
            offset[0] += n
            return head[offset[0] - n : offset[0]]

        wire.decode(read, lambda view: None, 3)

    best = []
    for function in (old, new):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(count):
                function()
            times.append((time.perf_counter() - start) / count)
        best.append(min(times))
    return best[0], best[1]


def mac_throughput(size: int = 1 << 20) -> float:
    """Bytes per second of the per-message MAC (HMAC-SHA256) on one core; best of five."""
    mac = auth.MessageMac(SECRET)
    payload = memoryview(np.ones(size // 4, np.float32).view(np.uint8))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            mac.tag(b"h" * 56, payload)
        best = min(best, (time.perf_counter() - start) / 10)
    return size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (best of)")
    options = parser.parse_args()
    plain, shaken = connection_setup()
    print(
        f"connection setup on loopback: plain connect {plain * 1e6:.0f} us, with the HMAC "
        f"handshake {shaken * 1e6:.0f} us (+{(shaken - plain) * 1e6:.0f} us per connection)"
    )
    old, new = header_costs()
    print(
        f"header encode+decode per message: pickled {old * 1e6:.2f} us, binary "
        f"{new * 1e6:.2f} us; MAC per message (HMAC-SHA256, one core): "
        f"{mac_throughput() / 1e9:.2f} GB/s"
    )
    sizes = [1 << k for k in range(10, 31, 2) if (1 << k) <= options.max_mb * (1 << 20)]
    variants = ("old", "new", "mac")
    times = all_reduce_times(variants, sizes, options.repeats)
    print("all_reduce of float32 between 2 processes on loopback; busbw GB/s = 2(n-1)/n bytes/t")
    print(
        f"{'bytes':>10} "
        + " ".join(f"{v + ' us':>10} {'busbw':>6}" for v in variants)
        + f" {'new/old':>8} {'mac/new':>8}"
    )
    for size in sizes:
        cells = " ".join(
            f"{times[v][size] * 1e6:>10.1f} {size / times[v][size] / 1e9:>6.3f}" for v in variants
        )
        print(
            f"{size:>10} {cells} {times['new'][size] / times['old'][size]:>8.2f} "
            f"{times['mac'][size] / times['new'][size]:>8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
