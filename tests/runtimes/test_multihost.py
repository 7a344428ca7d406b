"""The tcp and mpi runtimes across two "hosts": network namespaces made by this test and joined
by a veth pair (they exist only while it runs; needs root and `ip`, as CI has). One rank per
host trains the small MLP with the local runtime's numbers, every tcp socket listening on its
host's veth address only; killing every process of one host, or cutting its link, ends the job
within 10 s, naming that host. The mpi job is one `spmd-launch --runtime mpi --hosts a,b` in
host a: mpiexec (hydra) starts its proxy on host b through a launcher standing in for ssh that
enters b's namespace (HYDRA_LAUNCHER=ssh, HYDRA_LAUNCHER_EXEC)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectives import auth

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "runtimes" / "scripts" / "train_small.py"
MPI_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SPMD_RUNTIME",
    "SPMD_BIND_ADDR",
)
pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 to make network namespaces",
    ),
    pytest.mark.slow,
    pytest.mark.timeout(240),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def output(*command: str) -> str:
    """stdout of a command that may fail (its failure shows in what a test asserts next)."""
    return subprocess.run(command, check=False, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def hosts():
    """Two namespaces, host a at 10.X.Y.1 and host b at 10.X.Y.2, linked by a veth pair."""
    tag = f"{os.getpid() % 100000}"
    names = (f"spmd{tag}a", f"spmd{tag}b")
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    addresses = (f"{subnet}.1", f"{subnet}.2")
    try:
        ip("netns", "add", names[0])
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.strip()}")
    try:
        ip("netns", "add", names[1])
        ip("link", "add", f"v{tag}a", "type", "veth", "peer", "name", f"v{tag}b")
        for name, end, address in zip(names, "ab", addresses):
            ip("link", "set", f"v{tag}{end}", "netns", name)
            ip("-n", name, "addr", "add", f"{address}/24", "dev", f"v{tag}{end}")
            ip("-n", name, "link", "set", f"v{tag}{end}", "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield names, addresses
    finally:
        for name in names:
            for pid in output("ip", "netns", "pids", name).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            output("ip", "netns", "del", name)


def start_job(hosts, *args: str) -> list[subprocess.Popen]:
    """Rank r on host r, MASTER_ADDR host a's veth address, a port of its own per job."""
    start_job.count = getattr(start_job, "count", 0) + 1
    names, addresses = hosts
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES}
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        MASTER_ADDR=addresses[0],
        MASTER_PORT=str(29500 + start_job.count),
        WORLD_SIZE="2",
        SPMD_MESH="1x2",
        SPMD_AXES="data,model",
        SPMD_JOB_SECRET=auth.new_secret(),
        SPMD_COLLECTIVE_TIMEOUT="60",
    )
    command = [sys.executable, "-m", "launch.tcp_entry", str(SCRIPT), *args]  # starts tcp
    return [
        subprocess.Popen(
            ["ip", "netns", "exec", names[rank], *command],
            cwd=REPO,
            env=dict(env, RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


def local_result(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SPMD_MESH", "1x2")
    monkeypatch.setenv("SPMD_AXES", "data,model")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return re.search(r"RESULT loss=\S+ checksum=\S+", out.getvalue()).group(0)


def wait_for_training(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        line = "-"
        while line and not line.startswith("WAITING"):
            line = process.stdout.readline()
        assert line, process.stderr.read()[-3000:]


def test_two_hosts_train_with_the_local_runtime_numbers(hosts, monkeypatch) -> None:
    processes = start_job(hosts)
    try:
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0], (
        outputs[0][1][-3000:] + outputs[1][1][-3000:]
    )
    assert "processes=2" in outputs[0][0]  # one job over both hosts, not two local ones
    assert local_result(monkeypatch) in outputs[0][0]


def test_listening_sockets_use_the_veth_address_only(hosts) -> None:
    names, addresses = hosts
    processes = start_job(hosts, "--wait")
    try:
        wait_for_training(processes)
        for name, address in zip(names, addresses):
            listening = output("ip", "netns", "exec", name, "ss", "-ltnH")
            local = [row.split()[3] for row in listening.splitlines() if row.strip()]
            assert local and all(entry.startswith(address + ":") for entry in local), local
    finally:
        for process in processes:
            process.kill()
            process.communicate()


def test_losing_a_whole_host_ends_the_job_naming_it(hosts) -> None:
    names, addresses = hosts
    processes = start_job(hosts, "--wait")
    try:
        wait_for_training(processes)
        start = time.monotonic()
        for pid in output("ip", "netns", "pids", names[1]).split():
            os.kill(int(pid), 9)  # every process of host b
        _, err = processes[0].communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        for process in processes:
            process.kill()
    assert processes[0].returncode != 0 and took < 10
    assert f"process 1 at {addresses[1]} closed its connection without a goodbye" in err, err


def test_a_host_that_vanishes_without_closing_its_connections_is_named_within_10_s(hosts):
    """The link to host b goes down (as a power loss or a cut cable would): nothing closes
    the connections, and keepalive probes find the host gone."""
    names, addresses = hosts
    link = f"v{names[1][4:-1]}b"
    processes = start_job(hosts, "--wait")
    try:
        wait_for_training(processes)
        start = time.monotonic()
        ip("-n", names[1], "link", "set", link, "down")
        _, err = processes[0].communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        ip("-n", names[1], "link", "set", link, "up")
        for process in processes:
            process.kill()
            process.communicate()
    assert processes[0].returncode != 0 and took < 10, (took, err[-2000:])
    assert f"process 1 at {addresses[1]} stopped answering (its host is down" in err, err


# An ssh stand-in for hydra: `launcher -x HOST COMMAND...` runs COMMAND in HOST's namespace.
SSH_INTO_NAMESPACE = """#!/bin/sh
[ "$1" = "-x" ] && shift
host="$1"; shift
for pair in $(echo "$NETNS_HOSTS" | tr ',' ' '); do
    [ "${pair%%=*}" = "$host" ] && exec ip netns exec "${pair#*=}" sh -c "$*"
done
echo "no network namespace for host $host" >&2
exit 255
"""


def start_mpi_job(hosts, launcher: Path, *args: str) -> subprocess.Popen:
    """spmd-launch --runtime mpi in host a, rank 0 on host a and rank 1 on host b."""
    names, addresses = hosts
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES}
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        HYDRA_LAUNCHER="ssh",
        HYDRA_LAUNCHER_EXEC=str(launcher),
        SPMD_COLLECTIVE_TIMEOUT="60",
        NETNS_HOSTS=",".join(f"{a}={n}" for a, n in zip(addresses, names)),
    )
    command = [
        sys.executable,
        "-m",
        "launch.cli",
        "--mesh",
        "1x2",
        "--axes",
        "data,model",
        "--runtime",
        "mpi",
        "--hosts",
        ",".join(addresses),
        str(SCRIPT),
        *args,
    ]
    return subprocess.Popen(
        ["ip", "netns", "exec", names[0], *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def launcher(tmp_path) -> Path:
    path = tmp_path / "ssh_into_namespace"
    path.write_text(SSH_INTO_NAMESPACE)
    path.chmod(0o755)
    return path


def test_mpi_across_two_hosts_trains_with_the_local_runtime_numbers(
    hosts, launcher, monkeypatch
) -> None:
    process = start_mpi_job(hosts, launcher)
    try:
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    assert process.returncode == 0, err[-3000:]
    assert "processes=2" in out
    assert local_result(monkeypatch) in out
    names, _ = hosts
    assert not output("ip", "netns", "pids", names[1]).split()  # nothing left on host b


def test_mpi_losing_a_whole_host_ends_the_job_within_10_s(hosts, launcher) -> None:
    names, _ = hosts
    process = start_mpi_job(hosts, launcher, "--wait")
    try:
        seen = ""
        while seen.count("WAITING rank=") < 2:  # both ranks train, then wait
            # hydra forwards both ranks' output on one pipe: their lines can share a line
            line = process.stdout.readline()
            assert line, (seen, process.stderr.read()[-3000:])
            seen += line
        start = time.monotonic()
        for pid in output("ip", "netns", "pids", names[1]).split():
            os.kill(int(pid), 9)  # every process of host b: its hydra proxy and rank 1
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    assert process.returncode != 0 and took < 10, (took, err[-2000:])
