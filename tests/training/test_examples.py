"""The examples users start from: 20 training steps give the same parameters on 1 device,
(8,) data, (2,4) and (4,2); a run resumed from a checkpoint continues the same loss curve."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import spmd

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MESHES = ["1", "8", "2x4", "4x2"]


def load(name: str) -> ModuleType:
    """An example script as a module (registered first: its dataclasses look themselves up)."""
    module_name = f"spmd_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def leaves(tree: object) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in spmd.tree_leaves(tree)]


def assert_same_parameters(got: object, want: object, rtol: float = 1e-5) -> None:
    for a, b in zip(leaves(got), leaves(want), strict=True):
        assert a.shape == b.shape
        assert np.linalg.norm(a - b) <= rtol * max(np.linalg.norm(b), 1e-30), (
            f"relative difference {np.linalg.norm(a - b) / np.linalg.norm(b):.2e}"
        )


@pytest.fixture(scope="module")
def mlp() -> ModuleType:
    pytest.importorskip("sklearn")
    return load("train")


@pytest.fixture(scope="module")
def gpt() -> ModuleType:
    return load("transformer")


def mlp_config(mlp: ModuleType) -> object:
    return mlp.Config(
        hidden=32, steps=20, batch_size=32, learning_rate=1e-2, warmup_steps=4, dropout=0.25
    )


class Runs(dict):
    """Training runs by mesh, each made on first use (so each test pays for one mesh)."""

    def __init__(self, module: ModuleType, config: object):
        super().__init__()
        self.module = module
        self.config = config

    def __missing__(self, mesh: str) -> object:
        run = self.module.train(self.config, self.module.parse_mesh(mesh), progress=False)
        self[mesh] = run
        return run


@pytest.fixture(scope="module")
def mlp_runs(mlp: ModuleType) -> Runs:
    return Runs(mlp, mlp_config(mlp))


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_mlp_parameters_after_20_steps_do_not_depend_on_the_mesh(mlp_runs, mesh):
    assert_same_parameters(mlp_runs[mesh].params, mlp_runs["1"].params)
    np.testing.assert_allclose(mlp_runs[mesh].losses, mlp_runs["1"].losses, rtol=1e-5)


def test_mlp_learns(mlp_runs):
    losses = mlp_runs["2x4"].losses
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.3
    # 3x chance after 20 steps of a 32-wide MLP (the draw of JAX's random numbers gives 0.39)
    assert mlp_runs["2x4"].test_accuracy > 0.3


def test_mlp_weights_are_laid_out_megatron_style(mlp_runs):
    params = mlp_runs["2x4"].params
    assert params["w1"].sharding.spec == spmd.P(None, "model")
    assert params["w2"].sharding.spec == spmd.P("model")


def test_mlp_resumed_from_a_checkpoint_continues_the_same_loss_curve(mlp, mlp_runs, tmp_path):
    config = mlp_config(mlp)
    mesh = mlp.parse_mesh("2x4")
    first = mlp.train(
        config,
        mesh,
        checkpoint_dir=str(tmp_path),
        checkpoint_every=5,
        stop_after=12,
        progress=False,
    )
    np.testing.assert_allclose(first.losses, mlp_runs["2x4"].losses[:12], rtol=1e-6)
    resumed = mlp.train(config, mesh, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert len(resumed.losses) == 10  # from the step-10 checkpoint
    np.testing.assert_allclose(resumed.losses, mlp_runs["2x4"].losses[10:], rtol=1e-6)
    assert_same_parameters(resumed.params, mlp_runs["2x4"].params, rtol=1e-6)


def test_mlp_main_runs_with_flags(mlp, capsys):
    result = mlp.main(["--steps", "3", "--batch-size", "16", "--hidden", "16", "--mesh", "2x4"])
    out = capsys.readouterr().out
    assert "samples/s" in out and "test accuracy" in out
    assert len(result.losses) == 3


def test_mlp_started_like_torchrun_trains_as_one_two_process_job(mlp, capsys):
    """RANK/WORLD_SIZE/MASTER_* set by hand (what torchrun sets): the script joins the tcp
    runtime itself, rank 0 alone prints, and the accuracy is the local run's."""
    flags = ["--steps", "3", "--batch-size", "16", "--hidden", "16", "--mesh", "2"]
    mlp.main(flags)
    local = re.search(r"test accuracy \S+", capsys.readouterr().out).group(0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SPMD_RUNTIME")
    }
    env.update(
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(EXAMPLES.parent),
        SPMD_JOB_SECRET="a-per-job-secret-both-ranks-share",
    )
    processes = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLES / "train.py"), *flags],
            env=dict(env, RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert local in outputs[0][0]
    assert "test accuracy" not in outputs[1][0]  # one job: only rank 0 reports


def gpt_config(gpt: ModuleType) -> object:
    return gpt.Config(
        context=8,
        width=16,
        heads=4,
        layers=2,
        steps=20,
        batch_size=8,
        learning_rate=2e-2,
        warmup_steps=4,
    )


@pytest.fixture(scope="module")
def gpt_runs(gpt: ModuleType) -> Runs:
    return Runs(gpt, gpt_config(gpt))


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_transformer_parameters_after_20_steps_do_not_depend_on_the_mesh(gpt_runs, mesh):
    assert_same_parameters(gpt_runs[mesh].params, gpt_runs["1"].params)
    np.testing.assert_allclose(gpt_runs[mesh].losses, gpt_runs["1"].losses, rtol=1e-5)


def test_transformer_loss_falls(gpt_runs):
    losses = gpt_runs["2x4"].losses
    assert losses[0] > np.log(64)  # about uniform over the 128 byte values at the start
    assert np.mean(losses[-5:]) < losses[0] - 0.8


def test_transformer_attention_heads_are_sharded_over_model(gpt_runs):
    layers = gpt_runs["2x4"].params["layers"]
    assert layers["qkv"].sharding.spec == spmd.P(None, None, None, "model")
    assert layers["mlp_out"].sharding.spec == spmd.P(None, "model")


def test_transformer_flop_count_matches_the_parameter_tree(gpt, gpt_runs):
    config = gpt_config(gpt)
    counted = sum(x.size for x in leaves(gpt_runs["1"].params))
    assert gpt.parameter_count(config) == counted
    assert gpt.flops_per_token(config) == 6 * counted + 12 * 2 * 8 * 16
