"""spmd-launch --max-restarts: a tcp job whose process fails starts again (SPMD_RESTART set, a
fresh port and secret), resumes from its latest checkpoint, and its loss curve is the one of a
run that never failed (the local runtime's); with --min-devices it goes on on a smaller mesh;
restarts stop at N; bad flags are one line."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch import cli
from launch.elastic import restarts_on_remaining_devices, shrink_mesh
from spmd.errors import LaunchError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "runtimes" / "scripts"
RESUME = SCRIPTS / "train_resume.py"
ELASTIC = SCRIPTS / "train_elastic.py"
MPI_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SPMD_RUNTIME",
    "RANK",
    "WORLD_SIZE",
    "SPMD_RESTART",
)


def launch(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", SPMD_COLLECTIVE_TIMEOUT="60")
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def losses(output: str) -> dict[int, float]:
    """step -> loss (a step printed twice, before a failure and after the restart, keeps the
    later value)."""
    return {
        int(step): float(value)
        for step, value in re.findall(r"^LOSS step=(\d+) (\S+)$", output, re.MULTILINE)
    }


@pytest.mark.timeout(260)
def test_a_failed_job_restarts_from_its_latest_checkpoint_and_the_curve_continues(
    tmp_path, monkeypatch
) -> None:
    done = launch(
        "--mesh",
        "2",
        "--axes",
        "data",
        "--runtime",
        "tcp",
        "--max-restarts",
        "2",
        str(RESUME),
        str(tmp_path / "restarted"),
        "--fail-at",
        "3",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("spmd-launch: restart 1 of 2") == 1
    assert "restart 2 of 2" not in done.stderr
    assert "RuntimeError: deliberate failure after step 3" in done.stderr
    resumed = [int(k) for k in re.findall(r"RESUMED step=(\d+)", done.stdout)]
    assert resumed[0] == 0 and resumed[1] >= 4, done.stdout  # the second attempt did not redo
    monkeypatch.setenv("SPMD_MESH", "2")
    monkeypatch.setenv("SPMD_AXES", "data")
    monkeypatch.setattr(sys, "argv", [str(RESUME), str(tmp_path / "quiet")])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(RESUME), run_name="__main__")
    quiet, restarted = losses(out.getvalue()), losses(done.stdout)
    assert sorted(restarted) == sorted(quiet) == list(range(8))
    np.testing.assert_allclose(
        [restarted[s] for s in range(8)], [quiet[s] for s in range(8)], rtol=1e-5
    )


@pytest.mark.slow
@pytest.mark.timeout(260)
def test_restarts_stop_after_max_restarts() -> None:
    done = launch(
        "--mesh",
        "1x2",
        "--axes",
        "data,model",
        "--runtime",
        "tcp",
        "--max-restarts",
        "1",
        str(SCRIPTS / "train_small.py"),
        "--fail-on-rank",
        "1",
    )
    assert done.returncode == 1
    assert done.stderr.count("spmd-launch: restart 1 of 1") == 1
    assert done.stderr.count("[spmd rank 1] Traceback") == 2  # the first attempt and the restart


def run_locally(script: Path, mesh: str, axes: str, *args: str, monkeypatch) -> str:
    """The script's stdout under the local runtime (one process, every device)."""
    monkeypatch.setenv("SPMD_MESH", mesh)
    monkeypatch.setenv("SPMD_AXES", axes)
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    return out.getvalue()


@pytest.mark.timeout(200)  # 27 s measured on a lightly loaded 2-core machine
def test_min_devices_continues_on_a_smaller_mesh_and_the_loss_curve_goes_on(
    tmp_path, monkeypatch
) -> None:
    """Process 3 of a 2x2 job is SIGKILLed after computing step 3, before saving it: the job
    continues on 1x2 (2 devices) from the checkpoint of step 3, the parameters resharded, and
    every loss is the local runtime's on the full mesh."""
    done = launch(
        "--mesh",
        "2x2",
        "--axes",
        "data,model",
        "--runtime",
        "tcp",
        "--max-restarts",
        "1",
        "--min-devices",
        "2",
        str(ELASTIC),
        str(tmp_path / "elastic"),
        "--kill-at",
        "3",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lost = re.search(
        r"spmd-launch: continuing on 1x2 \(2 devices\) after losing process 3 "
        r"\(pid \d+ on \S+, killed by SIGKILL\)",
        done.stderr,
    )
    assert lost, done.stderr[-3000:]
    assert re.findall(r"MESH (\S+) processes=(\d+)", done.stdout) == [("2x2", "4"), ("1x2", "2")]
    assert re.findall(r"RESUMED step=(\d+)", done.stdout) == ["0", "3"]
    quiet = losses(
        run_locally(ELASTIC, "2x2", "data,model", str(tmp_path / "quiet"), monkeypatch=monkeypatch)
    )
    elastic = losses(done.stdout)
    assert sorted(elastic) == sorted(quiet) == list(range(8))
    np.testing.assert_allclose(
        [elastic[s] for s in range(8)], [quiet[s] for s in range(8)], rtol=1e-5
    )


@pytest.mark.parametrize(
    "shape,remaining,minimum,expected",
    [
        ((4, 2), 7, 2, (2, 2)),  # the data axis shrinks to a divisor: the batch still splits
        ((2, 2), 3, 2, (1, 2)),
        ((2, 2), 3, 3, None),  # below --min-devices
        ((8,), 5, 1, (4,)),
        ((1, 4), 3, 1, None),  # the model axis is never cut
        ((2, 2), 4, 4, (2, 2)),
    ],
)
def test_the_mesh_shrinks_along_its_first_axis(shape, remaining, minimum, expected) -> None:
    assert shrink_mesh(shape, remaining, minimum) == expected


def test_each_attempt_gets_the_mesh_left_and_too_few_devices_give_up(capsys) -> None:
    made = []
    environments = restarts_on_remaining_devices(
        (4, 2),
        4,
        lambda env, size, attempt: made.append((env["SPMD_MESH"], size, attempt)) or [env] * size,
        {"SPMD_MESH": "4x2"},
    )
    assert len(environments(0, [])) == 8
    assert len(environments(1, ["process 5 (pid 9 on n2, killed by SIGKILL)"])) == 4
    assert (
        "continuing on 2x2 (4 devices) after losing process 5 (pid 9 on n2, killed by "
        "SIGKILL)" in capsys.readouterr().err
    )
    assert environments(2, ["process 1 (pid 7 on n1, exited with code 1)"]) == []
    assert "cannot continue: 3 of 4 devices remain" in capsys.readouterr().err
    assert made == [("4x2", 8, 0), ("2x2", 4, 1)]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--runtime", "mpi", "--max-restarts", "1"], "--max-restarts needs --runtime tcp"),
        (["--runtime", "tcp", "--max-restarts", "-1"], "--max-restarts -1 must be 0 or more"),
        (["--runtime", "tcp", "--min-devices", "1"], "--min-devices 1 needs --max-restarts"),
        (
            ["--runtime", "tcp", "--max-restarts", "1", "--min-devices", "3"],
            "--min-devices 3 needs --max-restarts and must be between 1 and the mesh's 2 devices",
        ),
    ],
)
def test_bad_max_restarts_is_a_launch_error(args, message) -> None:
    options = cli.parser().parse_args(["--mesh", "2", *args, str(RESUME)])
    with pytest.raises(LaunchError, match=message):
        cli.check(options)
