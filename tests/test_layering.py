"""Dependencies point one way (DESIGN.md): the compiler core imports none of our other
packages, partitioner only the core, backends and collectives not each other, and only
spmd/dispatch.py reaches the rest of the pipeline, lazily (inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ("partitioner", "backends", "collectives", "launch")


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = (name or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, int, bool]] = []
    top_level = {id(node) for node in _top_level_nodes(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            found += [(name, node.lineno, id(node) in top_level) for name in names]
    return found


def _top_level_nodes(tree: ast.Module) -> list[ast.AST]:
    """Statements run at import time (module body, including if/try blocks, not TYPE_CHECKING)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo += getattr(node, field, [])
        if isinstance(node, ast.ExceptHandler):
            todo += node.body
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def violations(package: str, forbidden: tuple[str, ...], allow_lazy_in: tuple[str, ...] = (),
               ) -> list[str]:
    bad = []
    for path in modules(package):
        lazy_ok = module_name(path) in allow_lazy_in
        for name, line, at_top in imports(path):
            hit = top(name) in forbidden or any(name == f or name.startswith(f + ".")
                                                for f in forbidden)
            if hit and not (lazy_ok and not at_top):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_compiler_core_imports_nothing_of_the_pipeline():
    assert violations("spmd", PIPELINE, allow_lazy_in=("spmd.dispatch",)) == []


def test_dispatch_reaches_the_pipeline_only_lazily():
    path = ROOT / "spmd" / "dispatch.py"
    eager = [f"line {line}: {name}" for name, line, at_top in imports(path)
             if top(name) in PIPELINE and at_top]
    assert eager == []


def test_core_modules_never_import_dispatch_or_api_at_import_time():
    core = [p for p in modules("spmd") if p.parent.name in ("ir", "ops", "passes")]
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in core
           for name, line, at_top in imports(p)
           if at_top and name.split(".")[:2] in (["spmd", "dispatch"], ["spmd", "api"])]
    assert bad == []


@pytest.mark.parametrize("package,forbidden", [
    ("partitioner", ("backends", "collectives", "launch", "spmd.dispatch")),
    ("backends", ("collectives", "launch", "partitioner", "spmd.dispatch")),
    ("collectives", ("backends", "launch", "partitioner", "spmd.ir", "spmd.ops",
                     "spmd.dispatch")),
])
def test_pipeline_package_imports_only_what_it_may(package, forbidden):
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ does not exist yet")
    assert violations(package, forbidden) == []


def test_import_parser_sees_relative_and_lazy_imports(tmp_path):
    sample = tmp_path / "mod.py"
    sample.write_text("import os\nfrom . import sibling\nfrom ..ir import graph\n"
                      "try:\n    import backends.cpu\nexcept ImportError:\n    pass\n"
                      "def f():\n    from launch import local\n")
    found = imports(sample, "spmd.passes.mod")
    assert found == [("os", 1, True), ("spmd.passes.sibling", 2, True), ("spmd.ir.graph", 3, True),
                     ("backends.cpu", 5, True), ("launch.local", 9, False)]
