"""The interpreter backend's lowering table: every registered op runs by its numpy reference
(spmd.ops' `reference`), so the table is the registry itself."""

from __future__ import annotations

from spmd.ops import REGISTRY

LOWERINGS: dict[str, str] = {name: "reference" for name in REGISTRY}
