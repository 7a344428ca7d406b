"""The tcp runtime: plain python processes with torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
run every collective (against numpy) and the training script (against the local runtime); a
raising or killed process stops the others fast; rendezvous and socket faults are LaunchError,
RemoteError or CollectiveTimeoutError, never a hang."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from collectives.messages import Mailbox
from collectives.sockets import SocketChannel, SocketCommunicator
from launch.tcp import PEER_STOPPED_CODE, Launch, rendezvous
from spmd import distributed
from spmd.errors import CollectiveTimeoutError, LaunchError, RemoteError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "runtimes" / "scripts"
WORKER = SCRIPTS / "tcp_worker.py"
MPI_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SPMD_RUNTIME")
MESHES = {4: ("2x2", "data,model"), 8: ("2x4", "data,model")}
SECRET = "test-secret-" + "0123456789abcdef" * 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_world(size: int, *args: str) -> list[subprocess.Popen]:
    """size plain python processes with torchrun's variables, each running tcp_worker.py."""
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES}
    mesh, axes = MESHES[size]
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(size),
        SPMD_MESH=mesh,
        SPMD_AXES=axes,
        SPMD_COLLECTIVE_TIMEOUT="40",
        SPMD_JOB_SECRET=SECRET,
    )
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            cwd=REPO,
            env=dict(env, RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(size)
    ]


def finish(
    processes: list[subprocess.Popen],
    timeout: float,
) -> tuple[list[int], list[float], list[str], list[str]]:
    """(exit codes, exit times, stdouts, stderrs); kills everything and fails on a hang."""
    deadline = time.monotonic() + timeout
    ended: dict[int, float] = {}
    while len(ended) < len(processes) and time.monotonic() < deadline:
        for rank, process in enumerate(processes):
            if rank not in ended and process.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.05)
    for process in processes:
        process.kill()
    outputs = [process.communicate() for process in processes]
    stuck = [rank for rank in range(len(processes)) if rank not in ended]
    assert not stuck, f"ranks {stuck} hung:\n" + "\n".join(e[-2000:] for _, e in outputs)
    return (
        [p.returncode for p in processes],
        [ended[r] for r in range(len(processes))],
        [o for o, _ in outputs],
        [e for _, e in outputs],
    )


def result(output: str) -> tuple[float, float]:
    found = re.search(r"RESULT loss=(\S+) checksum=(\S+)", output)
    assert found, output[-3000:]
    return float(found.group(1)), float(found.group(2))


def local_result(size: int, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """The training script on the embedded local runtime, in this process."""
    mesh, axes = MESHES[size]
    monkeypatch.setenv("SPMD_MESH", mesh)
    monkeypatch.setenv("SPMD_AXES", axes)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "train_small.py")])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(SCRIPTS / "train_small.py"), run_name="__main__")
    return result(out.getvalue())


def check_world(size: int, monkeypatch: pytest.MonkeyPatch, budget: float = 150) -> None:
    codes, _, outs, errs = finish(start_world(size, "collectives+train"), timeout=budget)
    assert codes == [0] * size, "\n".join(errs)[-4000:]
    for rank, out in enumerate(outs):
        assert f"STARTED rank={rank} count={size} local=[{rank}] kind=tcp" in out
        assert "FAIL" not in out, out[-4000:]
        checks = [
            int(n) for n in re.findall(r"RESULT \(.*\) rank=\d+ checks=(\d+) failures=0", out)
        ]
        assert len(checks) == (4 if size == 8 else 2) and min(checks) > 50, out[-2000:]
    assert sum("RESULT loss=" in out for out in outs) == 1
    np.testing.assert_allclose(result(outs[0]), local_result(size, monkeypatch), rtol=1e-5)


@pytest.mark.timeout(170)
def test_four_processes_match_numpy_and_the_local_runtime(monkeypatch) -> None:
    check_world(4, monkeypatch)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_eight_processes_match_numpy_and_the_local_runtime(monkeypatch) -> None:
    check_world(8, monkeypatch, budget=300)  # 8 processes on a loaded 2-core machine: minutes


@pytest.mark.timeout(120)
def test_a_raising_process_stops_every_process_with_its_traceback_once() -> None:
    processes = start_world(4, "train", "--fail-on-rank", "2")
    codes, ended, outs, errs = finish(processes, 100)
    assert all(code != 0 for code in codes), codes
    assert max(ended) - ended[2] < 10
    assert "RESULT loss=" in outs[0]  # trained first, then rank 2 raised
    text = "".join(errs)
    assert text.count("Traceback (most recent call last)") == 1, text[-4000:]
    assert "[spmd rank 2] Traceback" in errs[2] and "train_small.py" in errs[2]
    assert "ValueError: deliberate failure on process 2" in errs[2]
    for rank in (0, 1, 3):
        assert re.search(
            rf"\[spmd rank {rank}\] stopping: process 2 \(pid {processes[2].pid} "
            r"on \S+\) failed with ValueError",
            errs[rank],
        ), errs[rank]
        assert codes[rank] == PEER_STOPPED_CODE  # so a launcher can tell who failed first


@pytest.mark.timeout(120)
def test_a_killed_process_stops_the_others() -> None:
    processes = start_world(4, "train", "--wait")
    for process in processes:  # every rank trained and now sleeps
        line = "-"
        while line and not line.startswith("WAITING"):
            line = process.stdout.readline()
    time.sleep(0.5)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    codes, ended, _, errs = finish(processes, timeout=30)
    assert all(code != 0 for code in codes), codes
    assert max(ended) - killed < 10
    for rank in (0, 2, 3):
        assert "process 1 at 127.0.0.1 closed its connection without a goodbye" in errs[rank], errs[
            rank
        ]


def clean_environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name in (*MPI_VARIABLES, "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPMD_JOB_SECRET", SECRET)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_unreachable_master_is_a_launch_error(monkeypatch) -> None:
    port = free_port()
    clean_environment(
        monkeypatch,
        RANK="1",
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        SPMD_RENDEZVOUS_TIMEOUT="0.5",
    )
    start = time.monotonic()
    with pytest.raises(
        LaunchError,
        match=f"rank 1 could not reach rank 0 at 127.0.0.1:{port} "
        r"within 0.5 s",
    ) as caught:
        distributed.initialize()
    assert time.monotonic() - start < 5
    assert "MASTER_PORT" in caught.value.hint
    assert not distributed.is_initialized()


def test_explicit_tcp_runtime_with_one_process(monkeypatch) -> None:
    clean_environment(
        monkeypatch, RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    distributed.initialize("tcp", install_excepthook=False)
    try:
        assert (
            distributed.runtime_kind(),
            distributed.process_index(),
            distributed.process_count(),
        ) == ("tcp", 0, 1)
        assert [d.id for d in distributed.local_devices()] == [0]
        distributed.barrier()
    finally:
        distributed.shutdown()
    assert not distributed.is_initialized()


def test_missing_master_variables_are_named(monkeypatch) -> None:
    clean_environment(monkeypatch, RANK="0", WORLD_SIZE="2")
    with pytest.raises(LaunchError, match="MASTER_ADDR, MASTER_PORT are not set"):
        distributed.initialize()


def test_world_size_disagreement_fails_both_ranks() -> None:
    port = free_port()
    errors: dict[int, str] = {}

    def join(rank: int, world_size: int) -> None:
        try:
            rendezvous(
                Launch(rank, world_size, "127.0.0.1", port, rank),
                1000 + rank,
                10.0,
                SECRET.encode(),
            )
        except LaunchError as exc:
            errors[rank] = exc.problem

    threads = [threading.Thread(target=join, args=args) for args in ((0, 2), (1, 3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    want = "rank 1 has WORLD_SIZE=3 but rank 0 has WORLD_SIZE=2"
    assert errors == {0: want, 1: want}


def test_a_rank_with_another_secret_is_told_so_and_rank_0_keeps_waiting() -> None:
    port = free_port()
    errors: dict[int, str] = {}

    def join(rank: int, secret: bytes, timeout: float) -> None:
        try:
            rendezvous(Launch(rank, 2, "127.0.0.1", port, rank), 1000 + rank, timeout, secret)
        except LaunchError as exc:
            errors[rank] = exc.problem

    threads = [
        threading.Thread(target=join, args=args)
        for args in ((0, SECRET.encode(), 4.0), (1, b"another-job-s-secret-000000", 10.0))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert "rank 1 refused the rendezvous at 127.0.0.1" in errors[1]
    assert "SPMD_JOB_SECRET differs" in errors[1]
    assert errors[0] == "rank 0 waited 4 s for ranks [1] of WORLD_SIZE=2 to join"


def pair() -> tuple[list[SocketChannel], list[SocketCommunicator]]:
    """Two connected channels in this process and a (2,) mesh's communicators over them."""
    mailboxes = [Mailbox(), Mailbox()]
    channels = [
        SocketChannel(m, host="127.0.0.1", label="process", secret=SECRET.encode())
        for m in mailboxes
    ]
    table = [("127.0.0.1", c.port) for c in channels]
    for rank, channel in enumerate(channels):
        channel.connect(table, me=rank)
    comms = [
        SocketCommunicator(r, (2,), ("x",), channels[r], mailboxes[r], [0, 1]) for r in range(2)
    ]
    return channels, comms


@pytest.mark.parametrize(
    "how,message",
    [
        ("killed", "process 1 at 127.0.0.1 closed its connection without a goodbye"),
        ("exited", "process 1 exited while process 0 still waits for it"),
    ],
)
def test_a_peer_leaving_is_a_remote_error_naming_it(how, message) -> None:
    channels, comms = pair()
    if how == "killed":
        channels[1].me = None  # closes like a killed process: no goodbye
    channels[1].close()
    start = time.monotonic()
    with pytest.raises(RemoteError, match=message):
        comms[0].all_reduce(np.ones(3), "x")
    assert time.monotonic() - start < 5
    channels[0].close()


def test_collective_timeout_is_honoured(monkeypatch) -> None:
    monkeypatch.setenv("SPMD_COLLECTIVE_TIMEOUT", "0.5")
    channels, comms = pair()
    result_of_one = [None]

    def partner() -> None:
        result_of_one[0] = comms[1].all_reduce(np.arange(4.0), "x")

    thread = threading.Thread(target=partner)
    thread.start()
    np.testing.assert_array_equal(comms[0].all_reduce(np.arange(4.0), "x"), np.arange(4.0) * 2)
    thread.join(5)
    np.testing.assert_array_equal(result_of_one[0], np.arange(4.0) * 2)
    start = time.monotonic()
    with pytest.raises(
        CollectiveTimeoutError,
        match=rf"waited more than 0.5 s on process 0 "
        rf"\(pid {os.getpid()}\); process 1 at 127.0.0.1:\d+ \(member 1 of the "
        r"group\) never sent",
    ):
        comms[0].all_gather(np.ones(2), "x", 0)
    assert time.monotonic() - start < 3
    for channel in channels:
        channel.close()
