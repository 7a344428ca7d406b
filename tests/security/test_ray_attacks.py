"""Attacks on the Ray transport's sockets from the same host: a pickle payload, garbage and
injected all-reduce data sent to every actor's port are refused; nothing runs, and every
collective still matches numpy. The local Ray here listens on loopback only."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "collectives"))

import cases
from cases import run_checks
from ray import cloudpickle

from collectives import wire

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
cloudpickle.register_pickle_by_value(cases)  # the actors cannot import tests/collectives


class Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def runtime():
    """A RayRuntime that starts its own local Ray (whose actors listen on loopback)."""
    from launch.ray import RayRuntime

    if ray.is_initialized():
        pytest.skip("needs a local Ray started by the runtime itself")
    saved = {name: os.environ.get(name) for name in ("SPMD_BIND_ADDR", "SPMD_COLLECTIVE_TIMEOUT")}
    os.environ.pop("SPMD_BIND_ADDR", None)
    os.environ.setdefault("SPMD_COLLECTIVE_TIMEOUT", "60")
    started = RayRuntime(num_devices=2)
    yield started
    started.shutdown()
    if ray.is_initialized():
        ray.shutdown()
    for name, value in saved.items():  # init_ray set SPMD_BIND_ADDR for its workers
        os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def hit(address: tuple[str, int], payload: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection(address, 2) as connection:
        connection.sendall(payload)
        connection.settimeout(0.2)
        with contextlib.suppress(OSError):
            connection.recv(1 << 16)


def test_pickle_garbage_and_injected_data_at_actor_ports_are_refused(runtime, tmp_path):
    addresses = ray.get([actor.address.remote() for actor in runtime.actors])
    assert all(host == "127.0.0.1" for host, _ in addresses)  # a one-host job: loopback
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Evil(str(marker)))
    mesh = ((2,), ("x",), (0, 1))
    ident = wire.collective_id((mesh, "sockets"))
    for address in addresses:
        hit(tuple(address), struct.pack("!I", len(evil)) + evil)
        hit(tuple(address), b"\x00\x00\x00\x09garbage!!")
        for step in range(1, 200):
            head, payload = wire.encode_array(wire.DATA, 1, (ident, step, 1), np.full(4, 1e3))
            hit(tuple(address), head + bytes(payload))
    assert not marker.exists()
    results = runtime.run_on_devices(run_checks, (2,), ("x",), "sockets")
    failures = [f for _, device_failures in results for f in device_failures]
    assert results[0][0] > 20 and not failures, "\n".join(failures[:20])
