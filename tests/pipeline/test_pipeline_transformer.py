"""examples/transformer.py --pipeline 2: the GPT's layers as two pipeline stages over 'pipe'
(GPipe, data x pipe x model 2x2x2) train to the parameters and loss curve of the unpipelined
model on one device (the oracle), and the flag's command line runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import spmd

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformer.py"


@pytest.fixture(scope="module")
def gpt():
    name = "spmd_example_transformer"  # the name tests/training uses: one module either way
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def small(gpt, **changes):
    return gpt.Config(
        context=8,
        width=16,
        heads=4,
        layers=4,
        steps=20,
        batch_size=8,
        learning_rate=2e-2,
        warmup_steps=4,
        **changes,
    )


@pytest.fixture(scope="module")
def unpipelined(gpt):
    return gpt.train(small(gpt), None, progress=False)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "mesh,stages,microbatches",
    [("2x2x2", 2, 4), pytest.param("1x4x2", 4, 8, marks=pytest.mark.slow)],
)
def test_pipelined_gpt_trains_like_the_unpipelined_one(
    gpt, unpipelined, mesh, stages, microbatches
):
    config = small(gpt, pipeline=stages, microbatches=microbatches)
    got = gpt.train(config, gpt.parse_mesh(mesh, pipeline=stages), progress=False)
    assert got.params["layers"]["qkv"].sharding.spec[:1] == ("pipe",)
    np.testing.assert_allclose(got.losses, unpipelined.losses, rtol=1e-5)
    want = spmd.tree_leaves(gpt.unstaged(unpipelined.params))
    for a, b in zip(spmd.tree_leaves(gpt.unstaged(got.params)), want, strict=True):
        assert a.shape == b.shape
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)
    assert np.mean(got.losses[-5:]) < got.losses[0] - 0.5  # it learns


def test_pipeline_flag_runs_from_the_command_line(gpt, capsys):
    result = gpt.main(
        [
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--context",
            "8",
            "--width",
            "16",
            "--mesh",
            "2x2x2",
            "--pipeline",
            "2",
            "--microbatches",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "data=2 x pipe=2 x model=2" in out and len(result.losses) == 2
    with pytest.raises(SystemExit):
        gpt.main(["--mesh", "2x4x1", "--pipeline", "2"])  # the pipe size must be 2
    with pytest.raises(SystemExit):
        gpt.main(["--layers", "3", "--mesh", "2x2x2", "--pipeline", "2"])
