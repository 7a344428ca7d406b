"""The Ray runtime and transport on a local Ray (8 actors, oversubscribed): every collective
against numpy on both wires, the training script against the local runtime, and faults."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collectives"))

import cases
from cases import MESHES, run_checks
from ray import cloudpickle

from spmd import dispatch
from spmd.errors import RemoteError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
cloudpickle.register_pickle_by_value(cases)  # the actors cannot import tests/collectives
SCRIPT = Path(__file__).resolve().parent / "scripts" / "train_small.py"


@pytest.fixture(scope="module")
def runtime():
    from launch.ray import RayRuntime

    os.environ.setdefault("SPMD_COLLECTIVE_TIMEOUT", "60")  # the actors inherit it
    started = RayRuntime(num_devices=8)
    pids = started.pids()
    yield started
    started.shutdown()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "orphan actors"


@pytest.mark.parametrize("channel", ["sockets", "objects"])
def test_every_collective_matches_numpy(runtime, channel) -> None:
    meshes = MESHES if channel == "sockets" else MESHES[1:2]
    for mesh_shape, axis_names in meshes:
        results = runtime.run_on_devices(run_checks, mesh_shape, axis_names, channel)
        failures = [f for _, device_failures in results for f in device_failures]
        assert results[0][0] > 50
        assert not failures, "\n".join(failures[:20])


def run_script(env: dict[str, str]) -> tuple[float, float]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    found = re.search(r"RESULT loss=(\S+) checksum=(\S+)", out.getvalue())
    assert found, out.getvalue()
    return float(found.group(1)), float(found.group(2))


def test_training_gives_the_same_numbers_on_ray_and_local(runtime, monkeypatch) -> None:
    env = {"SPMD_MESH": "2x4", "SPMD_AXES": "data,model"}
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    local = run_script(env)
    dispatch.set_runtime(runtime)
    try:
        on_ray = run_script(env)
        x = np.arange(24.0).reshape(4, 6)
        import spmd
        from spmd import P

        mesh = spmd.make_mesh((2, 4), ("data", "model"))
        placed = spmd.device_put(x, spmd.NamedSharding(mesh, P("data", "model")))
        assert type(placed._shards[0]).__name__ == "RemoteShard"  # the data lives in actors
        np.testing.assert_array_equal(np.asarray(placed * 2), x * 2)
    finally:
        dispatch.set_runtime(None)
    np.testing.assert_allclose(on_ray, local, rtol=1e-5)


def test_a_run_sent_before_its_store_arrives_waits_for_it(runtime) -> None:
    """Issue 15's crash: an actor runs calls out of order (it has several threads), so a step
    could start before the store of its input and raise KeyError on the handle."""
    import ray

    actor = runtime.actors[0]
    value = np.arange(12.0).reshape(3, 4)
    handle, dropped = 10**9, 10**9 + 1  # far above the runtime's own counter
    pending = actor.fetch.remote([handle])
    time.sleep(0.3)
    actor.store.remote(handle, value)
    np.testing.assert_array_equal(ray.get(pending, timeout=60)[0], value)
    before = ray.get(actor.held.remote())
    actor.free.remote([dropped])
    ray.get(actor.store.remote(dropped, value))
    actor.free.remote([handle])
    time.sleep(0.3)
    assert ray.get(actor.held.remote()) == before - 1  # the late store was dropped too


def test_the_training_example_runs_past_its_first_steps_on_ray(runtime, monkeypatch) -> None:
    """The README's command crashed at step ~3; 30 steps of examples/train.py, same losses as
    the local runtime."""
    import runpy

    example = Path(__file__).resolve().parents[2] / "examples" / "train.py"
    module = runpy.run_path(str(example))
    config = module["Config"](steps=30)
    import spmd

    local = module["train"](config, spmd.make_mesh((2, 4), ("data", "model")), progress=False)
    dispatch.set_runtime(runtime)
    try:
        mesh = spmd.make_mesh((2, 4), ("data", "model"))
        on_ray = module["train"](config, mesh, progress=False)
    finally:
        dispatch.set_runtime(None)
    np.testing.assert_allclose(on_ray.losses, local.losses, rtol=1e-5, atol=1e-6)


def one_step(runtime, bad_device: int | None = None) -> None:
    """A sharded matmul whose contraction needs an all_reduce; bad_device gets a wrong shape."""
    import spmd
    from spmd import P

    dispatch.set_runtime(runtime)
    try:
        mesh = spmd.make_mesh((8,), ("x",))
        f = spmd.jit(lambda a, b: a @ b)
        a = spmd.device_put(np.ones((4, 16)), spmd.NamedSharding(mesh, P(None, "x")))
        b = spmd.device_put(np.ones((16, 4)), spmd.NamedSharding(mesh, P("x", None)))
        executable = f.lower(a, b).compile().executable
        per_device = [[a._shards[d], b._shards[d]] for d in range(8)]
        if bad_device is not None:
            per_device[bad_device][0] = np.ones((3, 5))
        runtime.run(executable.partitioned, mesh, per_device)
    finally:
        dispatch.set_runtime(None)


def test_a_raising_actor_stops_the_step_with_its_traceback(runtime) -> None:
    start = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        one_step(runtime, bad_device=3)
    assert time.monotonic() - start < 10
    text = str(caught.value)
    pid = runtime.pids()[3]
    assert f"device 3 (Ray actor, pid {pid} on 127.0.0.1) failed first:" in text, text
    assert caught.value.loc.startswith("test_ray.py:")  # the user's line, not a Ray file
    assert 'interpreter.py", line' in text and "ValueError: matmul" in text  # the actor's frames
    one_step(runtime)  # the actors were reset: the next step works


def test_a_killed_actor_is_detected(runtime) -> None:
    os.kill(runtime.pids()[5], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="device 5"):
        one_step(runtime)
    assert time.monotonic() - start < 10


def stuck_or_killed(kind: str, device: int):
    """A function for run_on_devices: `device` sleeps (stuck) or SIGKILLs itself a moment
    after the others entered an all_reduce that waits for it (a 2 s collective timeout)."""

    def run(comm):
        import os
        import signal
        import time

        import numpy as np

        if comm.rank == device:
            time.sleep(0.5)
            if kind == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(15)  # past the others' timeout and the controller's settling
            return None
        before, comm.timeout = comm.timeout, 2.0  # this mesh's communicator, this call only
        try:
            return comm.all_reduce(np.ones(3), ("x",))
        finally:
            comm.timeout = before

    return run


def test_a_stuck_actor_is_blamed_not_the_ones_that_timed_out_waiting(runtime) -> None:
    pid = runtime.actor_info[2][1]
    with pytest.raises(RemoteError) as caught:
        runtime.run_on_devices(stuck_or_killed("stuck", 2), (4,), ("x",))
    text = str(caught.value)
    assert text.startswith(f"device 2 (Ray actor, pid {pid} on 127.0.0.1) is stuck: devices "), text
    assert "Error: " in text.split(" said:\n", 1)[1]  # a waiting device's own error follows
    assert caught.value.loc.startswith("test_ray.py:")
    assert "ray/_private" not in caught.value.loc and "worker.py" not in text


def test_an_actor_killed_inside_a_collective_is_blamed_not_its_waiting_peers(runtime) -> None:
    """Its peers see its sockets close first; Ray reports its death a moment later."""
    pid = runtime.actor_info[1][1]
    start = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        runtime.run_on_devices(stuck_or_killed("killed", 1), (4,), ("x",))
    assert time.monotonic() - start < 10
    text = str(caught.value)
    assert text.startswith(f"device 1 (Ray actor, pid {pid} on 127.0.0.1) failed first:"), text
    assert "actor died" in text.lower()
