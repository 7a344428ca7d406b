"""The pipeline on every runtime: a 1F1B training script on a 2x4 data x pipe mesh gives
the local runtime's numbers on mpi, tcp and ray (spmd-launch), and the local numbers equal
the numpy oracle's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "pipeline" / "scripts" / "pipeline_runtime.py"
MESH = ["--mesh", "2x4", "--axes", "data,pipe"]


def launch(*args: str, timeout: float = 400.0) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", *MESH, *args, str(SCRIPT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.findall(r"RESULT loss=(\S+) checksum=(\S+)", done.stdout)
    assert len(found) == 1, done.stdout[-3000:]
    return float(found[0][0]), float(found[0][1])


def oracle() -> tuple[float, float]:
    """The script's 3 SGD steps and final sum with the stages run in sequence in numpy."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 8, 8)) * 0.5).astype(np.float64)
    b = (rng.standard_normal((4, 8)) * 0.1).astype(np.float64)
    x = rng.standard_normal((16, 8)).astype(np.float32).astype(np.float64)
    t = np.sin(x)
    loss = 0.0
    for _ in range(3):
        hs = [x]
        for s in range(4):
            hs.append(np.tanh(hs[-1] @ w[s] + b[s]))
        # mean over 2 data shards x 4 microbatches of each block's mean squared error
        loss = float(np.mean((hs[-1] - t) ** 2))
        g = 2 * (hs[-1] - t) / hs[-1].size
        dw, db = np.zeros_like(w), np.zeros_like(b)
        for s in reversed(range(4)):
            gz = g * (1 - hs[s + 1] ** 2)
            dw[s], db[s] = hs[s].T @ gz, gz.sum(0)
            g = gz @ w[s].T
        w, b = w - 0.5 * dw, b - 0.5 * db
    h = x
    for s in range(4):
        h = np.tanh(h @ w[s] + b[s])
    return loss, float(h.sum() + w.sum() + b.sum())


@pytest.fixture(scope="module")
def local() -> tuple[float, float]:
    """The local runtime's numbers, launched once for every test of this module."""
    return launch()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_runtime_gives_the_oracle_numbers(local):
    np.testing.assert_allclose(local, oracle(), rtol=1e-4)


@pytest.mark.mpi
@pytest.mark.timeout(600)
def test_mpi_gives_the_local_numbers(local):
    np.testing.assert_allclose(launch("--runtime", "mpi"), local, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tcp_gives_the_local_numbers(local):
    np.testing.assert_allclose(launch("--runtime", "tcp"), local, rtol=1e-5)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_gives_the_local_numbers(local):
    np.testing.assert_allclose(launch("--runtime", "ray"), local, rtol=1e-5)
