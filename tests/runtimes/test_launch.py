"""spmd-launch: bad input exits 2 with one line; the training script gives the same numbers on
the local and mpi runtimes; a failing, killed or interrupted rank ends the job, no orphans."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "runtimes" / "scripts" / "train_small.py"
MESH = ["--mesh", "2x4", "--axes", "data,model"]


def launch(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def result(output: str) -> tuple[float, float]:
    found = re.search(r"RESULT loss=(\S+) checksum=(\S+)", output)
    assert found, output[-3000:]
    return float(found.group(1)), float(found.group(2))


def survivors(marker: str) -> list[str]:
    """Command lines of live processes that carry marker (the /proc scan; no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command and "pytest" not in command:
            found.append(f"{entry.name}: {command}")
    return found


def assert_no_orphans(marker: str) -> None:
    deadline = time.monotonic() + 30  # polls: returns as soon as none is left
    while survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert survivors(marker) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--mesh", "2xx4", str(SCRIPT)], "malformed mesh '2xx4'"),
        (
            ["--mesh", "4x4", "--runtime", "mpi", "--processes", "8", str(SCRIPT)],
            "mesh 4x4 needs 16 devices but 8 process(es) x 1 local device(s) give 8",
        ),
        (["--mesh", "2x4", "missing_script.py"], "script 'missing_script.py' not found"),
        (["--mesh", "2x4", "--axes", "data", str(SCRIPT)], "must give 2 distinct names"),
        (["--mesh", "2x4", "--device", "tpu", str(SCRIPT)], "is not cpu, gpu or tpu-sim:<chip>"),
        (["--mesh", "2x4"], "the following arguments are required: script"),
    ],
)
def test_bad_launch_input_gets_one_line_and_exit_2(args, message) -> None:
    assert_one_line_error(launch(*args), message)


def assert_one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    """spmd-launch exited 2 with one line naming the problem."""
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("spmd-launch: error: ")
    assert message in done.stderr


def test_help_shows_examples() -> None:
    done = launch("--help")
    assert done.returncode == 0
    assert "spmd-launch --mesh 2x4 --runtime ray" in done.stdout


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_training_gives_the_same_numbers_on_local_and_mpi() -> None:
    local = launch(*MESH, str(SCRIPT))
    mpi = launch(*MESH, "--runtime", "mpi", str(SCRIPT))
    assert local.returncode == 0, local.stderr[-3000:]
    assert mpi.returncode == 0, mpi.stderr[-3000:]
    assert "processes=8" in mpi.stdout and mpi.stdout.count("RESULT") == 1
    np.testing.assert_allclose(result(mpi.stdout), result(local.stdout), rtol=1e-5)


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_a_raising_rank_stops_the_job_with_its_traceback_once() -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    start = time.monotonic()
    done = launch(*MESH, "--runtime", "mpi", str(SCRIPT), "--fail-on-rank", "3", marker)
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert done.stderr.count("ValueError: deliberate failure on process 3") == 1
    assert "[spmd rank 3] Traceback" in done.stderr
    assert "train_small.py" in done.stderr
    assert elapsed < 30  # ~4 s of training and start-up on 2 cores, then the abort
    assert_no_orphans(marker)


# Budgets that hold on a busy 2-core CI machine (load average ~12 seen): starting 8 ranks that
# train may take minutes there; the stop is measured from the signal, against the launcher's
# own bound (3 s grace, SIGKILL, 3 s) with room for a scheduler that runs us 1/6 of the time.
STARTUP_BUDGET_S = 240
STOP_BUDGET_S = 45


def start_waiting_job(marker: str) -> tuple[subprocess.Popen, dict[int, int]]:
    """A launcher whose 8 ranks trained and now wait; returns it and {rank: pid}. The rest of
    its output is drained by a thread, so a full pipe can never hold up its exit."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.cli",
            *MESH,
            "--runtime",
            "mpi",
            str(SCRIPT),
            "--wait",
            marker,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pids: dict[int, int] = {}
    while len(pids) < 8:
        line = process.stdout.readline()
        assert line, "the job ended before every rank was waiting"
        for rank, pid in re.findall(r"WAITING rank=(\d+) pid=(\d+)", line):  # lines interleave
            pids[int(rank)] = int(pid)
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, pids


def stop_time(process: subprocess.Popen, start: float) -> float:
    """Seconds from start (just before the signal) until the launcher exited."""
    try:
        process.wait(timeout=STOP_BUDGET_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the launcher did not exit within {STOP_BUDGET_S} s of the signal")
    return time.monotonic() - start


@pytest.mark.mpi
@pytest.mark.timeout(STARTUP_BUDGET_S + STOP_BUDGET_S + 30)
def test_a_killed_rank_ends_the_job() -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    process, pids = start_waiting_job(marker)
    start = time.monotonic()
    os.kill(pids[2], signal.SIGKILL)
    assert stop_time(process, start) < STOP_BUDGET_S
    assert process.returncode != 0
    assert_no_orphans(marker)


@pytest.mark.mpi
@pytest.mark.timeout(STARTUP_BUDGET_S + STOP_BUDGET_S + 30)
def test_ctrl_c_stops_every_rank() -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    process, _ = start_waiting_job(marker)
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert stop_time(process, start) < STOP_BUDGET_S
    assert process.returncode == 130
    assert_no_orphans(marker)
