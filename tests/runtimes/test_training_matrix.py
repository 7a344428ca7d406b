"""The training example (examples/train.py: digits MLP on a 2x4 mesh, AdamW, donated params
and state, a checkpoint every 100 steps) on every runtime x backend: each row must end with
the parameters of an unbroken run on the embedded runtime with the same backend (rtol 1e-5)
and, for full-length rows, >= 97% test accuracy. The embedded and Ray rows stop halfway and
resume from their checkpoint; so do the mpi and tcp rows on the cpu backend, in a second
spmd-launch (every process saves its own shards of the checkpoint, spmd.checkpoint_save);
their interpreter rows run in one launch (the checkpoint path does not depend on the backend,
and two more starts of 8 processes cost ~30 s of CI).

Rows (what they cost on 2 busy cores decided their length): every runtime runs the full
default (400 steps) on the cpu backend; interpreter rows run 30 steps (the interpreter is the
numpy oracle the cpu rows are checked against elsewhere; a full run of it on 8 processes
would cost minutes and test nothing a short one does not). The references are computed once
per backend and length, in this process.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import spmd
import spmd.checkpoint
from spmd import dispatch

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train.py"
FULL = 400
SHORT = 30
RTOL = 1e-5
ATOL = 1e-6  # 1e-5 of the weights' scale (~0.1): elements near zero differ by rounding alone
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
# Dots stay on the BLAS: the native GEMM picks its variant by timing its first calls, so two
# runs on a loaded machine may round differently, and 400 Adam steps turn 1e-7 into a flipped
# ReLU unit (seen: 4e-4 in one column). The rows compare runtimes, not dot variants.
DETERMINISTIC = {"SPMD_NATIVE_GEMM": "0"}


@pytest.fixture(autouse=True)
def deterministic_dots(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DETERMINISTIC.items():
        monkeypatch.setenv(name, value)


def length(backend: str) -> int:
    return FULL if backend == "cpu" else SHORT


def example() -> dict[str, Any]:
    """A fresh copy of the example module (its jitted functions compile anew)."""
    return runpy.run_path(str(EXAMPLE))


def as_numpy(params: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in params.items()}


def train_in_process(
    steps: int,
    checkpoint_dir: Path | None = None,
    stop_after: int | None = None,
    resume: bool = False,
) -> Any:
    module = example()
    config = module["Config"](steps=steps)
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    directory = str(checkpoint_dir) if checkpoint_dir else None
    return module["train"](
        config,
        mesh,
        checkpoint_dir=directory,
        checkpoint_every=100 if steps == FULL else 15,
        stop_after=stop_after,
        resume=resume,
        progress=False,
    )


_REFERENCES: dict[tuple[str, int], tuple[dict[str, np.ndarray], float]] = {}


def reference(backend: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, float]:
    """(params, test accuracy) of an unbroken run on the embedded runtime (stacked)."""
    key = (backend, length(backend))
    if key not in _REFERENCES:
        with monkeypatch.context() as patch:
            patch.setenv("SPMD_BACKEND", backend)
            patch.setenv("SPMD_LOCAL_MODE", "stacked")
            result = train_in_process(length(backend))
        _REFERENCES[key] = (as_numpy(result.params), result.test_accuracy)
    return _REFERENCES[key]


def stopped_and_resumed(tmp_path: Path, steps: int) -> Any:
    train_in_process(steps, tmp_path, stop_after=steps // 2)
    return train_in_process(steps, tmp_path, resume=True)


def assert_matches(
    params: dict[str, np.ndarray], accuracy: float, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    want, want_accuracy = reference(backend, monkeypatch)
    assert sorted(params) == sorted(want)
    for name in want:
        np.testing.assert_allclose(
            params[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"parameter {name}"
        )
    if length(backend) == FULL:
        assert accuracy >= 0.97, accuracy
        assert want_accuracy >= 0.97, want_accuracy


@pytest.mark.parametrize("backend", ["cpu", "interpreter"])
@pytest.mark.parametrize("mode", ["stacked", "threads"])
def test_embedded_runtime(
    mode: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference(backend, monkeypatch)
    monkeypatch.setenv("SPMD_BACKEND", backend)
    monkeypatch.setenv("SPMD_LOCAL_MODE", mode)
    result = stopped_and_resumed(tmp_path, length(backend))
    assert_matches(as_numpy(result.params), result.test_accuracy, backend, monkeypatch)


def launch(runtime: str, backend: str, *args: str) -> str:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        SPMD_BACKEND=backend,
        SPMD_COLLECTIVE_TIMEOUT="120",
        **DETERMINISTIC,
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "--mesh",
            "2x4",
            "--axes",
            "data,model",
            "--runtime",
            runtime,
            str(EXAMPLE),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.mark.parametrize("backend", ["cpu", "interpreter"])
@pytest.mark.parametrize("runtime", [pytest.param("mpi", marks=pytest.mark.mpi), "tcp"])
def test_multi_controller_runtime(
    runtime: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spmd-launch runs the example halfway, saving a checkpoint from every process; a second
    spmd-launch resumes from it, then gathers and saves the final parameters (interpreter
    rows: one launch)."""
    saved, steps = tmp_path / "params.npz", length(backend)
    common = (
        "--steps",
        str(steps),
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
        "--checkpoint-every",
        str(steps // 2),
    )
    if backend == "interpreter":
        output = launch(runtime, backend, *common, "--save-params", str(saved))
        assert f"{steps} steps run" in output
    else:
        launch(runtime, backend, *common, "--stop-after", str(steps // 2))
        output = launch(runtime, backend, *common, "--resume", "--save-params", str(saved))
        assert f"{steps - steps // 2} steps run" in output  # resumed: the first half not redone
    accuracy = float(re.search(r"test accuracy (\S+)%", output).group(1)) / 100
    with np.load(saved) as params:
        assert_matches(dict(params), accuracy, backend, monkeypatch)


@pytest.fixture(scope="module")
def ray_runtime():
    pytest.importorskip("ray")
    from launch.ray import RayRuntime

    os.environ.setdefault("SPMD_COLLECTIVE_TIMEOUT", "120")
    os.environ.update(DETERMINISTIC)  # the actors inherit the environment Ray starts with
    started = RayRuntime(num_devices=8)
    yield started
    started.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["cpu", "interpreter"])
def test_ray_runtime(
    ray_runtime: Any, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller picks the backend (SPMD_BACKEND here) and every actor compiles the
    per-device program with it."""
    import ray

    reference(backend, monkeypatch)
    monkeypatch.setenv("SPMD_BACKEND", backend)
    dispatch.set_runtime(ray_runtime)
    try:
        result = stopped_and_resumed(tmp_path, length(backend))
        params = as_numpy(result.params)
    finally:
        dispatch.set_runtime(None)
    compiled = ray.get([actor.compiled.remote() for actor in ray_runtime.actors])
    assert all(any(kind == backend for _, kind in found) for found in compiled), compiled
    assert_matches(params, result.test_accuracy, backend, monkeypatch)
