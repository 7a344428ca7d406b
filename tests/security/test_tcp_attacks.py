"""Attacks on the tcp runtime from the same host: an impostor at the rendezvous (joining as a
rank, or squatting on MASTER_PORT), and a running job whose every port is hit with pickle
payloads, garbage, spoofed aborts and injected all-reduce data. Each is refused and logged; the
job ends with exit 0 and the numbers of an unattacked run."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import re
import runpy
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from collectives import auth, wire
from launch.tcp import Launch, rendezvous
from spmd.errors import LaunchError

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "security" / "scripts" / "attacked_worker.py"
TRAIN = REPO / "tests" / "runtimes" / "scripts" / "train_small.py"
SECRET = b"rendezvous-test-secret-0123456789"
MPI_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SPMD_RUNTIME")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect_retrying(port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def receive(connection: socket.socket) -> bytes:
    """What the other end sent before closing (a close with our bytes unread is a reset)."""
    try:
        return connection.recv(1 << 16)
    except ConnectionResetError:
        return b""


@pytest.mark.timeout(60)
def test_a_rendezvous_impostor_is_refused_and_the_real_rank_joins(caplog) -> None:
    port = free_port()
    tables: dict[int, list] = {}

    def rank(number: int) -> None:
        tables[number] = rendezvous(
            Launch(number, 2, "127.0.0.1", port, number), 5000 + number, 20.0, SECRET
        )

    with caplog.at_level(logging.WARNING, logger="spmd.security"):
        zero = threading.Thread(target=rank, args=(0,))
        zero.start()
        hello = {"rank": 1, "world_size": 2, "host": "127.0.0.1", "port": 6666}
        with connect_retrying(port) as impostor:  # the old protocol: a JSON hello, no secret
            impostor.sendall((json.dumps(hello) + "\n").encode())
            assert receive(impostor) == b""  # closed without the table
        with (
            connect_retrying(port) as impostor,
            pytest.raises(  # a guessed secret
                auth.AuthenticationError, match="does not hold this job's"
            ),
        ):
            auth.client_handshake(impostor, b"guessed-secret-0123456789abcdef", 1)
        one = threading.Thread(target=rank, args=(1,))
        one.start()
        for thread in (zero, one):
            thread.join(30)
    want = [("127.0.0.1", 5000), ("127.0.0.1", 5001)]
    assert tables == {0: want, 1: want}  # the impostor's port 6666 is nowhere
    assert caplog.text.count("the tcp rendezvous (rank 0) refused a connection") == 2


@pytest.mark.timeout(60)
def test_a_squatter_on_master_port_gets_no_hello_from_a_joining_rank() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = []

    def squat() -> None:
        connection, _ = server.accept()
        with connection:
            with contextlib.suppress(auth.AuthenticationError):
                auth.server_handshake(connection, b"the-squatter-has-no-secret-000")
            connection.settimeout(2)
            with contextlib.suppress(OSError):
                received.append(connection.recv(1 << 16))

    thread = threading.Thread(target=squat)
    thread.start()
    with pytest.raises(LaunchError, match="rank 1 refused the rendezvous at 127.0.0.1"):
        rendezvous(Launch(1, 2, "127.0.0.1", port, 1), 5001, 10.0, SECRET)
    thread.join(10)
    server.close()
    assert b"port" not in b"".join(received)  # the rank's hello (its port) never left it


class Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def attacks(marker: Path) -> list[bytes]:
    """What an attacker without the secret sends to a rank's port."""
    evil = pickle.dumps(Evil(str(marker)))
    legacy = pickle.dumps(
        (("__spmd_control__", "abort", 1, "fake traceback"), np.dtype(np.uint8), (0,))
    )
    ident = wire.collective_id(("test", "attacked"))
    injected = [
        b"".join(
            part
            for part in wire.encode_array(wire.DATA, 1, (ident, step, 1), np.full(3, 1000.0))
            if part
        )
        for step in range(1, 21)
    ]
    spoofed = wire.encode_text(wire.ABORT, 1, "process 1 failed with FakeError")
    return [
        struct.pack("!I", len(evil)) + evil,
        struct.pack("!I", len(legacy)) + legacy,
        b"\x00\x00\x00\x09garbage!!",
        spoofed,
        *injected,
    ]


def hit(port: int, payload: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as sock:
        sock.sendall(payload)
        sock.settimeout(0.05)
        with contextlib.suppress(OSError):
            sock.recv(1 << 16)


def local_result(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SPMD_MESH", "1x2")
    monkeypatch.setenv("SPMD_AXES", "data,model")
    monkeypatch.setattr(sys, "argv", [str(TRAIN)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(TRAIN), run_name="__main__")
    return re.search(r"RESULT loss=\S+ checksum=\S+", out.getvalue()).group(0)


@pytest.mark.timeout(180)
def test_a_job_under_attack_finishes_with_the_numbers_of_a_quiet_run(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES}
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE="2",
        SPMD_MESH="1x2",
        SPMD_AXES="data,model",
        SPMD_JOB_SECRET=auth.new_secret(),
        SPMD_TEST_PAUSE="2",
        SPMD_COLLECTIVE_TIMEOUT="60",
    )
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=dict(env, RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        ports = []
        for process in processes:
            line = process.stdout.readline()
            assert line.startswith("PORT "), line + process.stderr.read()[-3000:]
            ports.append(int(line.split()[1]))
        marker = tmp_path / "pwned"
        stop = threading.Event()

        def attacker() -> None:
            while not stop.is_set():
                for port in ports:
                    for payload in attacks(marker):
                        hit(port, payload)

        thread = threading.Thread(target=attacker, daemon=True)
        thread.start()  # during the pause, the all_reduces and the training
        outputs = [process.communicate(timeout=150) for process in processes]
        stop.set()
        thread.join(10)
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-3000:]
    assert not marker.exists()
    for out, err in outputs:
        assert "ALLREDUCE [3.0, 3.0, 3.0]" in out, out
        assert "refused a connection from 127.0.0.1" in err  # logged
        assert "FakeError" not in out + err
    assert local_result(monkeypatch) in outputs[0][0]
