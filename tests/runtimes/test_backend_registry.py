"""backends.registry: every device kind's backend loads with its capabilities, choose() is the
one rule (SPMD_BACKEND, then size), every runtime compiles through it, and each backend's
executable agrees with the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from backends import registry
from spmd import NamedSharding, P
from spmd.errors import ConfigError, LaunchError
from spmd.interpreter import evaluate


def graph_of(n: int) -> object:
    x = np.linspace(-1, 1, n, dtype=np.float32)
    return spmd.jit(lambda v: snp.tanh(v * 2.0) + 1.0).lower(x).graph, x


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_kind_loads_with_its_capabilities(kind: str) -> None:
    backend = registry.get(kind)
    assert backend.kind == kind
    assert backend.capabilities.collectives in ("run_op", "device")
    reason = backend.unavailable()
    assert reason is None or isinstance(reason, str)


@pytest.mark.parametrize("kind", ["cpu", "interpreter", "tpu-sim"])
def test_each_host_backend_matches_the_reference(kind: str) -> None:
    graph, x = graph_of(1000)
    got = registry.get(kind).compile(graph)([x])[0]
    np.testing.assert_allclose(got, evaluate(graph, [x])[0], rtol=1e-5, atol=1e-6)  # float32 ulps


def test_choose_follows_spmd_backend_then_size(monkeypatch: pytest.MonkeyPatch) -> None:
    small, _ = graph_of(8)
    size = registry.program_size(small)
    monkeypatch.delenv("SPMD_BACKEND", raising=False)
    assert registry.choose("cpu", small) == "interpreter"
    copies = -(-registry.NATIVE_MIN_ELEMENTS // size)  # enough devices to cover the threshold
    assert registry.choose("cpu", small, copies=copies) == "cpu"
    monkeypatch.setenv("SPMD_BACKEND", "cpu")
    assert registry.choose("cpu", small) == "cpu"
    monkeypatch.setenv("SPMD_BACKEND", "gpu-fast")
    with pytest.raises(ConfigError, match="SPMD_BACKEND='gpu-fast'"):
        registry.choose("cpu", small)


def test_unknown_kinds_are_launch_errors() -> None:
    with pytest.raises(LaunchError, match="no backend for device kind 'fpga'"):
        registry.get("fpga")


def test_the_embedded_runtime_is_a_runtime_and_compiles_through_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from launch.runtime import local_runtime

    monkeypatch.setenv("SPMD_BACKEND", "cpu")
    monkeypatch.setenv("SPMD_LOCAL_MODE", "threads")
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    x = np.arange(64.0, dtype=np.float32).reshape(8, 8)
    f = spmd.jit(lambda a: snp.tanh(a).sum(axis=0))
    got = f(spmd.device_put(x, NamedSharding(mesh, P("data", "model"))))
    np.testing.assert_allclose(np.asarray(got), np.tanh(x).sum(axis=0), rtol=1e-6)
    executable = f.lower(spmd.device_put(x, NamedSharding(mesh, P("data", "model")))).compile()
    prepared = executable.executable.prepared_on(local_runtime())
    assert local_runtime().kind == "local"
    assert type(prepared.compiled_program()).__module__ == "backends.cpu.executable"
