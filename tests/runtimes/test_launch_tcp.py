"""spmd-launch --runtime tcp: local processes with torchrun's variables give the local runtime's
numbers; a raising or killed process, Ctrl-C, SIGTERM or --timeout ends the job fast with every
traceback printed once and no orphans; bad input exits 2 with one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from launch.processes import torchrun_environments
from tests.runtimes.test_launch import (
    SCRIPT,
    assert_no_orphans,
    assert_one_line_error,
    launch,
    result,
    survivors,
)

REPO = Path(__file__).resolve().parents[2]
TCP = ["--runtime", "tcp"]


def test_each_process_gets_torchrun_variables_and_only_them() -> None:
    base = {
        "RANK": "7",
        "PMI_SIZE": "8",
        "MASTER_PORT": "1",
        "KEEP": "yes",
        "SPMD_JOB_SECRET": "an-old-job-s-secret",
    }
    environments = torchrun_environments(base, 3)
    port = environments[0]["MASTER_PORT"]
    assert port != "1" and port.isdigit()
    secret = environments[0]["SPMD_JOB_SECRET"]  # a fresh one per job, the same for its ranks
    assert len(secret) == 64 and secret != torchrun_environments(base, 3)[0]["SPMD_JOB_SECRET"]
    for rank, environment in enumerate(environments):
        assert environment == {
            "KEEP": "yes",
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "3",
            "LOCAL_WORLD_SIZE": "3",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "SPMD_LAUNCHER_PID": str(os.getpid()),
            "SPMD_JOB_SECRET": secret,
        }
    assert torchrun_environments({"OMP_NUM_THREADS": "4"}, 1)[0]["OMP_NUM_THREADS"] == "4"


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--mesh", "2x2", *TCP, "--processes", "3", str(SCRIPT)],
            "--runtime tcp runs one device per process: --processes 3 must equal the size 4 of mesh 2x2",
        ),
        (
            ["--mesh", "2x2", *TCP, "--processes", "8", str(SCRIPT)],
            "--processes 8 must equal the size 4 of mesh 2x2",
        ),
        (
            ["--mesh", "2x2", *TCP, "--hosts", "n1,n2", str(SCRIPT)],
            "--hosts/--hostfile need --runtime mpi",
        ),
        (["--mesh", "2x2", "--runtime", "tcpx", str(SCRIPT)], "invalid choice: 'tcpx'"),
    ],
)
def test_bad_tcp_input_gets_one_line_and_exit_2(args, message) -> None:
    assert_one_line_error(launch(*args), message)


def test_help_shows_the_tcp_runtime() -> None:
    done = launch("--help")
    assert done.returncode == 0
    assert "spmd-launch --mesh 2x4 --runtime tcp train.py" in done.stdout
    assert "this host only" in done.stdout


def local_numbers(mesh: str) -> tuple[float, float]:
    done = launch("--mesh", mesh, "--axes", "data,model", str(SCRIPT))
    assert done.returncode == 0, done.stderr[-3000:]
    return result(done.stdout)


def check_training(mesh: str, size: int) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    done = launch("--mesh", mesh, "--axes", "data,model", *TCP, str(SCRIPT), marker)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("RESULT") == 1 and f"processes={size}" in done.stdout
    assert done.stderr == ""
    np.testing.assert_allclose(result(done.stdout), local_numbers(mesh), rtol=1e-5)
    assert survivors(marker) == []


@pytest.mark.timeout(60)
def test_training_on_2x2_gives_the_local_runtime_numbers() -> None:
    check_training("2x2", 4)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_training_on_2x4_gives_the_local_runtime_numbers() -> None:
    check_training("2x4", 8)


@pytest.mark.timeout(60)
def test_a_raising_process_stops_the_job_with_its_traceback_once() -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    done = launch("--mesh", "2x2", *TCP, str(SCRIPT), "--fail-on-rank", "2", marker)
    assert done.returncode == 1
    assert done.stderr.count("Traceback (most recent call last)") == 1, done.stderr
    assert (
        len(re.findall("^ValueError: deliberate failure on process 2$", done.stderr, re.MULTILINE))
        == 1
    ), done.stderr
    assert "[spmd rank 2] Traceback" in done.stderr and "train_small.py" in done.stderr
    assert "runpy" not in done.stderr and "tcp_entry" not in done.stderr  # the user's frames only
    # the raising rank is named, not a peer it stopped (those exit 87 and may be reaped first)
    assert re.search(
        r"^spmd-launch: process 2 \(pid \d+ on \S+\) exited with code 1; "
        r"stopping the others$",
        done.stderr,
        re.MULTILINE,
    ), done.stderr
    assert_no_orphans(marker)


SLEEPER = """import os, time
print(f"WAITING rank={os.environ['RANK']} pid={os.getpid()}", flush=True)
time.sleep(60)
"""


def start_waiting_job(tmp_path: Path, marker: str) -> tuple[subprocess.Popen, dict[int, int]]:
    """A launcher whose 4 processes joined the tcp world and now sleep; it and {rank: pid}."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "--mesh", "2x2", *TCP, str(script), marker],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pids: dict[int, int] = {}
    while len(pids) < 4:
        line = process.stdout.readline()
        assert line, "the job ended before every process was waiting"
        for rank, pid in re.findall(r"WAITING rank=(\d+) pid=(\d+)", line):
            pids[int(rank)] = int(pid)
    return process, pids


def finish(process: subprocess.Popen, start: float, marker: str) -> tuple[int, str]:
    """(exit code, the rest of the output) of a job being stopped; it must end within 10 s."""
    try:
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert time.monotonic() - start < 10
    assert_no_orphans(marker)
    return process.returncode, output


@pytest.mark.timeout(60)
def test_a_killed_process_ends_the_job(tmp_path) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    process, pids = start_waiting_job(tmp_path, marker)
    start = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    code, output = finish(process, start, marker)
    assert code == 128 + signal.SIGKILL
    assert re.search(
        rf"spmd-launch: process 1 \(pid {pids[1]} on \S+\) was killed by SIGKILL; "
        r"stopping the others\n",
        output,
    ), output
    assert "Traceback" not in output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_every_process(tmp_path, sig) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    process, _ = start_waiting_job(tmp_path, marker)
    start = time.monotonic()
    process.send_signal(sig)
    code, output = finish(process, start, marker)
    assert code == 128 + sig
    assert f"spmd-launch: {signal.Signals(sig).name}: stopping 4 running processes" in output
    assert "Traceback" not in output  # no KeyboardInterrupt from each process


@pytest.mark.timeout(60)
def test_timeout_stops_every_process(tmp_path) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    start = time.monotonic()
    done = launch("--mesh", "2x2", *TCP, "--timeout", "4", str(script), marker)
    assert done.returncode == 124
    assert 4 <= time.monotonic() - start < 14
    assert done.stderr.count("\n") == 1
    assert "spmd-launch: --timeout 4 s expired: stopping 4 running processes" in done.stderr
    assert_no_orphans(marker)


@pytest.mark.timeout(60)
def test_a_killed_launcher_leaves_no_orphans(tmp_path) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    process, _ = start_waiting_job(tmp_path, marker)
    process.kill()
    process.communicate(timeout=10)
    assert_no_orphans(marker)
