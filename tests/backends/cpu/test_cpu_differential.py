"""The partitioner's differential suite again, with every device program compiled by the
CPU backend and run on one thread per device (issue 5: the whole suite on this backend)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.partitioner import test_partition_differential as differential


@pytest.fixture(autouse=True)
def native_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_BACKEND", "cpu")
    monkeypatch.setenv("SPMD_LOCAL_MODE", "threads")


@pytest.mark.parametrize("fn,shapes,mesh_name,in_specs,out_spec,scale", differential.FAMILIES)
def test_sharded_matches_unsharded_on_cpu_backend(
    fn: Any, shapes: Any, mesh_name: str, in_specs: Any, out_spec: Any, scale: float
) -> None:
    differential.test_sharded_matches_unsharded(fn, shapes, mesh_name, in_specs, out_spec, scale)
