"""Every module of the five packages imports in a fresh interpreter of the test environment:
an import that only some code path reaches (an undeclared dependency, a cycle that one import
order hides) fails here instead of in a user's program (issue 14)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    done = subprocess.run([sys.executable, "-c", CHILD, *names], cwd=REPO, capture_output=True,
                          text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"{name}: {why}" for name, why in failed.items())
