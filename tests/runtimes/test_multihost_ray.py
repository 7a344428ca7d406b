"""The Ray runtime across two "hosts" (test_multihost's network namespaces): `ray start --head`
in host a, a worker node in host b, then `spmd-launch --runtime ray --address` in host a; one
device's actor runs on each host, and the small MLP trains with the local runtime's numbers.

The cluster is this test's alone: it listens only on the namespaces' veth addresses (no other
process on the machine can reach it), on a non-default port, with its own temp folders (a plain
ray.init() looks for running clusters in /tmp/ray, never there) and its own token (RAY_AUTH_MODE
=token). It is torn down in a finally by killing every process of both namespaces: `ray stop`
would stop every Ray on the machine, other jobs' too."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

import pytest
from test_multihost import MPI_VARIABLES, REPO, SCRIPT, hosts, local_result, output

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 to make network namespaces",
    ),
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.timeout(400),  # 85 s measured (two `ray start`s and the job) under load 20
]
__all__ = ["hosts"]  # the namespaces fixture, shared with test_multihost
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
PORT = 6391 + os.getpid() % 500  # not Ray's default 6379


def in_host(
    name: str, environment: dict[str, str], *command: str, timeout: float
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", name, *command],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cluster(hosts):
    """(head address, environment that reaches it): a head node in host a, a worker in b."""
    pytest.importorskip("ray")
    names, addresses = hosts
    folder = tempfile.mkdtemp(prefix="spmdray")  # short: Ray's socket paths have a length limit
    token = os.path.join(folder, "token")
    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        handle.write(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES and k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=token,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
    )
    head = f"{addresses[0]}:{PORT}"
    try:
        started = in_host(
            names[0],
            env,
            RAY,
            "start",
            "--head",
            f"--port={PORT}",
            f"--node-ip-address={addresses[0]}",
            f"--temp-dir={folder}/a",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            timeout=150,
        )
        assert started.returncode == 0, started.stderr[-3000:]
        joined = in_host(
            names[1],
            env,
            RAY,
            "start",
            f"--address={head}",
            f"--node-ip-address={addresses[1]}",
            f"--temp-dir={folder}/b",
            "--num-cpus=1",
            "--disable-usage-stats",
            timeout=150,
        )
        assert joined.returncode == 0, joined.stderr[-3000:]
        yield head, env
    finally:
        for name in names:  # every process of the cluster, and nothing else
            for pid in output("ip", "netns", "pids", name).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        shutil.rmtree(folder, ignore_errors=True)


def test_ray_across_two_hosts_trains_with_the_local_runtime_numbers(
    hosts, cluster, monkeypatch
) -> None:
    names, addresses = hosts
    head, env = cluster
    done = in_host(
        names[0],
        dict(env, SPMD_COLLECTIVE_TIMEOUT="60"),
        sys.executable,
        "-m",
        "launch.cli",
        "--mesh",
        "1x2",
        "--axes",
        "data,model",
        "--runtime",
        "ray",
        "--address",
        head,
        str(SCRIPT),
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"ACTOR HOSTS {addresses[0]},{addresses[1]}" in done.stdout
        or f"ACTOR HOSTS {addresses[1]},{addresses[0]}" in done.stdout
    ), done.stdout
    assert local_result(monkeypatch) in done.stdout
    with contextlib.suppress(OSError), open("/tmp/ray/ray_current_cluster") as handle:
        assert head not in handle.read()  # a plain ray.init() on this machine never finds it
