"""A group of local child processes for `spmd-launch --runtime tcp`: torchrun's variables and a
fresh job secret per rank, then supervision (one failure, Ctrl-C, SIGTERM or --timeout stops them
all, no orphans; the process that failed first is named, not one it took down with it).
Imports nothing from spmd.
"""

from __future__ import annotations

import ctypes
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from spmd import config

POLL_S = 0.05
# After one process fails, how long the others may take to end by themselves (the tcp runtime
# stops them within milliseconds, each saying why) before they get SIGTERM.
FAILURE_GRACE_S = 1.0
# How long the launcher looks for the process that failed first when the first one it sees
# ended because a peer failed (the culprit writes its traceback first; on a loaded machine
# its exit can trail its peers' by more than a second).
CULPRIT_WAIT_S = 5.0
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this
TIMEOUT_CODE = 124
# Exit status of a tcp process stopped because another failed (launch.tcp.PEER_STOPPED_CODE).
PEER_STOPPED_CODE = 87
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal a child gets when its parent dies
# Set by a parent mpiexec or torchrun; a child must see only the variables of its own world.
INHERITED = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PMI_SIZE",
    "PMI_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "MPI_LOCALNRANKS",
    "SPMD_JOB_SECRET",
    "SPMD_RESTART",
)


class Interrupted(Exception):
    """The launcher got SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (rank 0 binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def torchrun_environments(
    base: Mapping[str, str], size: int, host: str = "127.0.0.1", restart: int = 0
) -> list[dict[str, str]]:
    """One environment per rank: base plus RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, a free
    MASTER_PORT, a fresh SPMD_JOB_SECRET (only this job's processes can join it: the
    environment of a process is readable by its user alone), and OMP_NUM_THREADS=1 unless base
    sets it (size processes share the cores); SPMD_RESTART=restart on a restarted job."""
    common = {name: value for name, value in base.items() if name not in INHERITED}
    common.setdefault("OMP_NUM_THREADS", "1")
    common.update(
        WORLD_SIZE=str(size),
        MASTER_ADDR=host,
        MASTER_PORT=str(free_port(host)),
        LOCAL_WORLD_SIZE=str(size),
        SPMD_LAUNCHER_PID=str(os.getpid()),
        SPMD_JOB_SECRET=secrets.token_hex(32),
    )
    if restart:
        common["SPMD_RESTART"] = str(restart)
    return [dict(common, RANK=str(rank), LOCAL_RANK=str(rank)) for rank in range(size)]


def run_group(
    command: Sequence[str], environments: Sequence[Mapping[str, str]], timeout: float | None = None
) -> int:
    """Runs command once per environment and waits for all: 0 if every process exits 0. The
    first failure stops the others (its code is returned); SIGINT/SIGTERM to the launcher stop
    all (128 + signal); so does timeout seconds passing (124). Nothing is left running."""
    return _run(command, environments, timeout)[0]


def run_restarting(
    command: Sequence[str],
    environments: Callable[[int, list[str]], Sequence[Mapping[str, str]]],
    timeout: float | None,
    max_restarts: int,
) -> int:
    """run_group, started again (environments(attempt, lost): a fresh port and secret, and
    SPMD_RESTART=attempt; lost: the processes that failed by themselves last time, e.g.
    "process 3 (pid 123 on n1, killed by SIGKILL)"; no environments: give up) up to
    max_restarts times after a process fails; never after Ctrl-C, SIGTERM or the timeout,
    which covers every attempt together. A script that saves checkpoints resumes from its
    latest one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt, code, lost = 0, 0, []
    while True:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        group = environments(attempt, lost)
        if not group:
            return code
        code, why, lost = _run(command, group, remaining)
        if why != "failed" or attempt >= max_restarts:
            return code
        attempt += 1
        _say(
            f"restart {attempt} of {max_restarts}: starting every process again "
            f"(SPMD_RESTART={attempt}); a script that saves checkpoints resumes from its latest"
        )


def _run(
    command: Sequence[str], environments: Sequence[Mapping[str, str]], timeout: float | None
) -> tuple[int, str, list[str]]:
    """run_group's (exit code, why it ended: 'ok', 'failed', 'timeout' or 'interrupted', the
    processes that failed by themselves)."""
    processes: list[subprocess.Popen] = []
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for environment in environments:
            processes.append(_start(command, environment))
        return _wait(processes, timeout)
    except Interrupted as exc:
        for sig in previous:  # a second Ctrl-C must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        _say(f"{exc}: stopping {_count(processes)}")
        _stop(processes, grace=0.0)
        return 128 + exc.signum, "interrupted", []
    finally:
        _stop(processes, grace=0.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _start(command: Sequence[str], environment: Mapping[str, str]) -> subprocess.Popen:
    """Its own session: a terminal's Ctrl-C reaches only the launcher, which stops the group
    once, instead of every rank printing a KeyboardInterrupt traceback."""
    return subprocess.Popen(list(command), env=dict(environment), start_new_session=True)


def end_with_launcher() -> None:
    """Called first thing in a child: SIGTERM to it when the launcher dies (Linux), so even a
    SIGKILLed launcher leaves no orphans; exits now if the launcher is already gone."""
    launcher = config.env("SPMD_LAUNCHER_PID")
    if launcher is None:
        return
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:
        os._exit(1)


def _wait(
    processes: list[subprocess.Popen],
    timeout: float | None,
) -> tuple[int, str, list[str]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: queue.SimpleQueue[int] = queue.SimpleQueue()  # ranks in the order they exit
    for rank, process in enumerate(processes):
        threading.Thread(
            target=_report_end,
            args=(process, rank, ended),
            daemon=True,
            name=f"spmd-launch-wait-{rank}",
        ).start()
    remaining = len(processes)
    while remaining:
        try:
            rank = ended.get(timeout=POLL_S)
        except queue.Empty:
            rank = None
        if rank is not None:
            remaining -= 1
            if processes[rank].returncode != 0:
                code, lost = _on_failure(processes, rank)
                return code, "failed", lost
        if deadline is not None and time.monotonic() > deadline:
            _say(f"--timeout {timeout:g} s expired: stopping {_count(processes)}")
            _stop(processes, grace=0.0)
            return TIMEOUT_CODE, "timeout", []
    return 0, "ok", []


def _report_end(process: subprocess.Popen, rank: int, ended: queue.SimpleQueue) -> None:
    process.wait()
    ended.put(rank)


def _on_failure(processes: list[subprocess.Popen], rank: int) -> tuple[int, list[str]]:
    """One line naming the process that failed (rank, pid, host), then stops the rest; (exit
    code, every process that failed by itself). The first seen to end badly may be a peer it
    took down (those exit PEER_STOPPED_CODE, and the kernel may reap one before the culprit):
    look past them for up to CULPRIT_WAIT_S."""
    rank = _culprit(processes, rank)
    code = processes[rank].returncode
    _say(f"{_describe(processes, rank)}; stopping the others")
    lost = [
        _describe(processes, r, brief=True)
        for r, p in enumerate(processes)
        if p.poll() not in (None, 0, PEER_STOPPED_CODE)
    ]
    _stop(processes, grace=FAILURE_GRACE_S)
    return (code if code > 0 else 128 - code), lost or [_describe(processes, rank, brief=True)]


def _describe(processes: list[subprocess.Popen], rank: int, brief: bool = False) -> str:
    """'process 3 (pid 123 on n1) was killed by SIGKILL' for a process that ended; brief:
    'process 3 (pid 123 on n1, killed by SIGKILL)'."""
    code = processes[rank].returncode
    how = f"exited with code {code}" if code > 0 else f"was killed by {_signal_name(-code)}"
    if code == PEER_STOPPED_CODE:
        how += " (stopped by another process's failure)"
    where = f"process {rank} (pid {processes[rank].pid} on {socket.gethostname()}"
    if brief:
        return f"{where}, {how.removeprefix('was ')})"
    return f"{where}) {how}"


def _culprit(processes: list[subprocess.Popen], first: int) -> int:
    """The rank that failed by itself: not stopped by a peer (PEER_STOPPED_CODE) nor exited 0;
    first if none shows up within CULPRIT_WAIT_S."""
    deadline = time.monotonic() + CULPRIT_WAIT_S
    while processes[first].returncode == PEER_STOPPED_CODE:
        for rank, process in enumerate(processes):
            if process.poll() not in (None, 0, PEER_STOPPED_CODE):
                return rank
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    return first


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _count(processes: list[subprocess.Popen]) -> str:
    running = sum(process.poll() is None for process in processes)
    return f"{running} running process{'es' if running != 1 else ''}"


def _stop(processes: list[subprocess.Popen], grace: float) -> None:
    """Waits up to grace seconds for the processes to end by themselves, then SIGTERM to each
    one's process group (its children too), then SIGKILL to what is left after STOP_GRACE_S."""
    for sig, wait_s in ((None, grace), (signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        for process in processes:
            if sig is not None:
                _signal_group(process, sig)
        deadline = time.monotonic() + wait_s
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if all(p.poll() is not None for p in processes) and sig is not None:
            return


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """The group outlives its leader while a grandchild is in it; its id is not reused then."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        return


def _say(message: str) -> None:
    sys.stderr.write(f"spmd-launch: {message}\n")
    sys.stderr.flush()
