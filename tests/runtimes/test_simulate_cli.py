"""spmd-launch --device tpu-sim:<chip> --simulate: unchanged scripts print their step's report.

The oracle for step times is spmd.sim.simulate of the same step in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
import spmd.sim
from spmd import NamedSharding, P

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120

# A training loop that knows nothing about simulation: it reads float(loss) every step.
TINY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import spmd
    import spmd.numpy as snp
    from spmd import NamedSharding, P
    from spmd.distributed import launch_mesh

    width = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    mesh = launch_mesh()
    by_model = NamedSharding(mesh, P(None, "model"))
    init = spmd.jit(lambda scale: snp.ones((width, width)) * scale, out_shardings=by_model)

    def loss_fn(w, x):
        return snp.mean(snp.tanh(x @ w) ** 2)

    @spmd.jit
    def step(w, x):
        loss, grad = spmd.value_and_grad(loss_fn)(w, x)
        return w - 0.1 * grad, loss

    w = init(0.01)
    x = spmd.device_put(np.ones((64, width), np.float32), NamedSharding(mesh, P("data", None)))
    for i in range(1000):
        w, loss = step(w, x)
        print(f"step {i} loss {float(loss):.4f}")
""")


def launch(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def step_time_ms(output: str) -> float:
    found = re.search(r"step time ([0-9.]+) ms$", output, re.MULTILINE)
    assert found, output
    return float(found.group(1))


def mfu(output: str) -> float:
    found = re.search(r"; MFU ([0-9.e+-]+)%;", output)
    assert found, output
    return float(found.group(1)) / 100


def check_trace(path: Path, tracks: int) -> None:
    events = json.loads(path.read_text())["traceEvents"]
    devices = {e["pid"] for e in events if e.get("ph") == "X"}
    assert len(devices) == tracks


def test_train_example_prints_its_step_and_stops(tmp_path: Path) -> None:
    trace = tmp_path / "train.json"
    done = launch(
        "--device",
        "tpu-sim:v5e",
        "--mesh",
        "16x16",
        "--trace",
        str(trace),
        str(REPO / "examples" / "train.py"),
        "--simulate",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "TPU simulation: v5e x 256 (mesh 16x16 [data,model]" in out
    assert step_time_ms(out) > 0 and 0 < mfu(out) < 1
    assert "all_reduce[data]" in out and "peak HBM" in out
    assert "stopped after the first step" in out and "float(loss)" in out
    assert "test accuracy" not in out  # the training loop did not go on
    check_trace(trace, 16)


def test_transformer_example_simulates_its_pod_step(tmp_path: Path) -> None:
    done = launch(
        "--device",
        "tpu-sim:v5e",
        "--mesh",
        "16x16",
        "--simulate",
        "--trace",
        str(tmp_path / "gpt.json"),
        "--trace-devices",
        "4",
        str(REPO / "examples" / "transformer.py"),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "GPT 607M parameters" in out
    assert out.count("TPU simulation: v5e x 256") == 1  # printed once, by the launcher
    assert step_time_ms(out) > 1 and 0.001 < mfu(out) < 1
    assert "all_reduce[model]" in out
    check_trace(tmp_path / "gpt.json", 4)


def tiny_step_oracle(width: int) -> float:
    """The tiny script's step simulated in this process from ShapeDtypeStructs."""
    mesh = spmd.make_mesh((16, 16), ("data", "model"), device="tpu-sim:v5e")

    def loss_fn(w: object, x: object) -> object:
        return snp.mean(snp.tanh(x @ w) ** 2)

    def step(w: object, x: object) -> object:
        loss, grad = spmd.value_and_grad(loss_fn)(w, x)
        return w - 0.1 * grad, loss

    w = spmd.ShapeDtypeStruct((width, width), "float32", NamedSharding(mesh, P(None, "model")))
    x = spmd.ShapeDtypeStruct((64, width), "float32", NamedSharding(mesh, P("data", None)))
    return spmd.sim.simulate(step, w, x).step_time_s


def test_unchanged_script_matches_in_process_simulation(tmp_path: Path) -> None:
    script = tmp_path / "tiny.py"
    script.write_text(TINY_SCRIPT)
    done = launch(
        "--device",
        "tpu-sim:v5e",
        "--mesh",
        "16x16",
        "--simulate",
        "--trace",
        str(tmp_path / "t.json"),
        str(script),
        "1024",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "2 program(s) simulated" in out  # init and step
    assert "tiny.py:25" in out  # the training step, by the line that called it
    assert "stopped after the first step" in out and "tiny.py:26" in out
    assert "step 0 loss" not in out
    expected_ms = tiny_step_oracle(1024) * 1e3
    assert step_time_ms(out) == pytest.approx(expected_ms, rel=1e-3, abs=1e-3)


def test_model_too_big_for_hbm_names_its_buffers(tmp_path: Path) -> None:
    script = tmp_path / "tiny.py"
    script.write_text(TINY_SCRIPT)
    done = launch(
        "--device",
        "tpu-sim:v5e",
        "--mesh",
        "16x16",
        "--simulate",
        str(script),
        str(1 << 18),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "out of HBM" in done.stderr and "largest live buffers" in done.stderr
    assert "16.00 GiB" in done.stderr and "tiny.py:12" in done.stderr  # the init line


def test_script_without_a_tpu_sim_mesh_is_told(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import spmd\nprint(float(spmd.jit(lambda x: x + 1)(1.0)))\n")
    done = launch("--device", "tpu-sim:v5e", "--mesh", "2x2", "--simulate", str(script))
    assert done.returncode == 1
    assert "2.0" in done.stdout and "no jitted call on a tpu-sim:v5e mesh" in done.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--device", "cpu"],
        ["--device", "tpu-sim:v5e", "--runtime", "mpi"],
        ["--device", "tpu-sim:nope"],
    ],
)
def test_bad_simulate_input_exits_2(tmp_path: Path, extra: list[str]) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    done = launch("--mesh", "2x2", "--simulate", *extra, str(script))
    assert done.returncode == 2
    assert done.stderr.startswith("spmd-launch: error:") and done.stderr.count("\n") == 1


def test_simulated_values_flow_through_jit_and_stop_on_read() -> None:
    mesh = spmd.make_mesh((2, 2), ("data", "model"), device="tpu-sim:v5e")
    x = spmd.device_put(np.ones((4, 6), np.float32), NamedSharding(mesh, P("data", None)))
    double = spmd.jit(lambda a: a * 2)
    with spmd.sim.first_step() as programs:
        y = double(x)
        z = spmd.jit(lambda a, b: (a @ b).sum(axis=0))(y, x.T)
        assert isinstance(z, spmd.sim.SimulatedValue)
        assert z.shape == (np.ones((4, 6)) @ np.ones((6, 4))).sum(axis=0).shape
        assert z.dtype == "float32" and y.sharding.spec == P("data")
        for read in (float, np.asarray, lambda v: v + 1, lambda v: f"{v:.3f}"):
            with pytest.raises(spmd.sim.SimulationDone):
                read(z)
    assert len(programs) == 3  # double, the transpose of x (eager, sharded), the matmul
    np.testing.assert_array_equal(np.asarray(double(x)), np.full((4, 6), 2.0, np.float32))
