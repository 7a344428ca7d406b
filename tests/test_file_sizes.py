"""Line budgets (STYLE.md): every module at most 400 lines, every test module at most 600."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spmd", "partitioner", "backends", "collectives", "launch", "benchmarks", "examples")
MODULE_LIMIT = 400
TEST_LIMIT = 600


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def too_long(paths: list[Path], limit: int) -> list[str]:
    out = []
    for path in paths:
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            out.append(f"{path.relative_to(ROOT)}: {count} lines (limit {limit}); split it by noun")
    return out


def test_every_module_is_at_most_400_lines():
    paths = [
        p for package in PACKAGES if (ROOT / package).is_dir() for p in python_files(ROOT / package)
    ]
    assert paths
    assert too_long(paths, MODULE_LIMIT) == []


def test_every_test_module_is_at_most_600_lines():
    paths = python_files(ROOT / "tests")
    assert paths
    assert too_long(paths, TEST_LIMIT) == []
