"""Every module of the five packages imports in a fresh interpreter of the test environment:
an import that only some code path reaches (an undeclared dependency, a cycle that one import
order hides) fails here instead of in a user's program (issue 14)."""

from __future__ import annotations

import json
import pkgutil
from pathlib import Path

import pytest

from tests.fresh_python import fresh_python

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("spmd", "partitioner", "collectives", "backends", "launch")

# Run in the child: import each named module after a fresh start of the package, report
# failures as JSON (module -> last line of the traceback).
CHILD = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc().strip().splitlines()[-1]
print(json.dumps(failed))
"""


def modules_of(package: str) -> list[str]:
    path = REPO / package
    names = [package]
    for info in pkgutil.walk_packages([str(path)], prefix=f"{package}."):
        names.append(info.name)
    return sorted(names)


def test_every_package_has_modules():
    for package in PACKAGES:
        assert len(modules_of(package)) > 1, package


@pytest.mark.timeout(600)
@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports_in_a_fresh_interpreter(package):
    names = modules_of(package)
    failed = json.loads(fresh_python(CHILD, *names, timeout=540).strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"{name}: {why}" for name, why in failed.items())


# The compiler core and the partitioner load alone: none of the public API comes with them
# (spmd/__init__.py is a lazy facade; docs/architecture.md, issue 16).
CORE = (
    "spmd.ir.graph",
    "spmd.ir.printer",
    "spmd.ops",
    "spmd.passes",
    "spmd.tracing",
    "spmd.autodiff",
    "spmd.interpreter",
    "spmd.mesh",
    "partitioner.partition",
)
API = (
    "spmd.api",
    "spmd.dispatch",
    "spmd.executables",
    "spmd.numpy",
    "spmd.lax",
    "launch",
    "backends",
)
ALONE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m in sys.argv[2:])))
"""


@pytest.mark.timeout(300)
def test_the_core_imports_without_the_public_api():
    loaded = {}
    for name in CORE:
        loaded[name] = json.loads(fresh_python(ALONE, name, *API).strip().splitlines()[-1])
    assert loaded == {name: [] for name in CORE}


def test_the_facade_loads_each_name_on_first_use():
    code = (
        "import sys, spmd; assert 'spmd.api' not in sys.modules; "
        "import spmd.vmap, spmd.shard_map, spmd.checkpoint; "
        "assert callable(spmd.jit) and 'spmd.api' in sys.modules; "
        "assert spmd.vmap.__name__ == 'vmap' and spmd.shard_map.__name__ == 'shard_map'; "
        "assert callable(spmd.checkpoint) and callable(spmd.checkpoint.save); "
        "assert spmd.config.jax_enable_x64 in (True, False); "
        "from spmd import *; from spmd import numpy, lax, jit, P; print('ok')"
    )
    assert fresh_python(code).strip() == "ok"
