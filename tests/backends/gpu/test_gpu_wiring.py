"""A gpu mesh reaches the GPU backend and NCCL, or fails where it is made: the registry's
choice, make_mesh's error without cupy or a GPU, the NCCL unique-id exchange over a host
communicator (no GPU needed), and a sharded program on a gpu mesh against the interpreter
(skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
from backends import registry
from collectives.local import LocalWorld, run_on_devices
from collectives.nccl import NCCL_ID_BYTES, exchange_through
from spmd.errors import LaunchError

GPU = registry.get("gpu").unavailable() is None


def small_program() -> object:
    return spmd.jit(lambda v: v * 2.0).lower(np.ones(4, np.float32)).graph


def test_a_gpu_mesh_compiles_with_the_gpu_backend_whatever_spmd_backend_says(monkeypatch):
    graph = small_program()
    for choice in ("auto", "cpu", "interpreter"):
        monkeypatch.setenv("SPMD_BACKEND", choice)
        assert registry.choose("gpu", graph) == "gpu"
    monkeypatch.setenv("SPMD_BACKEND", "interpreter")
    assert registry.choose("cpu", graph) == "interpreter"
    assert registry.choose("tpu-sim:v5e", graph) == "interpreter"
    gpu = registry.get("gpu").capabilities
    assert gpu.collectives == "device" and not gpu.host_arrays and not gpu.batched


@pytest.mark.skipif(GPU, reason="this machine has a GPU and cupy")
def test_make_mesh_on_gpu_without_cupy_or_a_gpu_is_a_launch_error() -> None:
    with pytest.raises(LaunchError) as caught:
        spmd.make_mesh((2, 4), ("data", "model"), device="gpu")
    text = str(caught.value)
    assert "device='gpu' cannot run on this machine" in text and "cupy" in text
    assert "test_gpu_wiring.py" in text  # names the user's line


def test_an_unknown_device_kind_is_refused_at_make_mesh() -> None:
    with pytest.raises(LaunchError, match="unknown device kind 'fpga'"):
        spmd.make_mesh((2,), ("x",), device="fpga")


def test_nccl_ids_reach_every_member_of_their_group_over_a_host_communicator() -> None:
    """Groups over 'model' on a 2x4 mesh: the group key is the 'data' coordinate, the root is
    model index 0; every member must get its own group root's 128-byte id."""

    def root_id(key: int) -> tuple[int, ...]:
        return tuple(int(b) for b in (np.arange(NCCL_ID_BYTES) * (key + 3) % 256) - 128)

    def device(comm: object) -> tuple[int, ...]:
        data, model = divmod(comm.rank, 4)
        exchange = exchange_through(comm)
        return exchange(("model",), data, root_id(data) if model == 0 else None)

    got = run_on_devices(LocalWorld((2, 4), ("data", "model")), device)
    assert got == [root_id(rank // 4) for rank in range(8)]


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs cupy and a GPU")
def test_a_sharded_program_on_a_gpu_mesh_matches_the_interpreter() -> None:
    from spmd import NamedSharding, P

    x = np.arange(32.0, dtype=np.float32).reshape(4, 8)
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    mesh = spmd.make_mesh((2, 4), ("data", "model"), device="gpu")
    f = spmd.jit(lambda a, b: spmd.numpy.tanh(a @ b).sum(axis=0))
    got = f(
        spmd.device_put(x, NamedSharding(mesh, P("data", "model"))),
        spmd.device_put(w, NamedSharding(mesh, P("model", None))),
    )
    np.testing.assert_allclose(np.asarray(got), np.tanh(x @ w).sum(axis=0), rtol=1e-5)


@pytest.mark.skipif(GPU, reason="this machine has a GPU and cupy")
def test_spmd_launch_on_gpu_without_one_exits_2_before_starting_processes() -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "--mesh",
            "2x4",
            "--runtime",
            "mpi",
            "--device",
            "gpu",
            str(repo / "examples" / "train.py"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "device='gpu' cannot run on this machine" in done.stderr
    assert "MLP 64-256-10" not in done.stdout  # no process started the script
