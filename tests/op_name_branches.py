"""Finds code that branches on an op's name: `op.name == "reduce"`, `name in ("eq", "ne")`,
`op.name in SOME_SET` where SOME_SET is a literal set of op names. Facts about ops belong
on their OpDef (traits, linearity, attr_kinds) and what a backend runs or emits in its
table keyed by op (a dict: a lookup is not a branch).

Run as a script to count per package: python tests/op_name_branches.py [ROOT]
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("backends", "collectives", "launch", "partitioner", "spmd")
REGISTRY_HOME = "spmd/ops/"  # where the facts live: not scanned
NAME_VARS = {"name", "op_name"}  # plain variables that hold an op's name


def op_names() -> frozenset[str]:
    from spmd.ops import REGISTRY

    return frozenset(REGISTRY)


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("frozenset", "set", "tuple"):
        return [s for a in node.args for s in _strings(a)]
    return []


def _is_name(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "name") or (
        isinstance(node, ast.Name) and node.id in NAME_VARS
    )


def branches(path: Path, names: frozenset[str]) -> Iterator[tuple[int, str]]:
    """(line, op name) of each comparison of an op's name with op-name literals."""
    tree = ast.parse(path.read_text(), str(path))
    consts: dict[str, list[str]] = {}  # module-level NAME = {literal op names}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = [s for s in _strings(node.value) if s in names]
            for t in targets:
                if isinstance(t, ast.Name) and found:
                    consts[t.id] = found
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if not any(_is_name(s) for s in sides):
            continue
        for side in sides:
            hits = [s for s in _strings(side) if s in names]
            if isinstance(side, ast.Name):
                hits += consts.get(side.id, [])
            for hit in hits:
                yield node.lineno, hit


def scan(root: Path, names: frozenset[str]) -> dict[str, list[tuple[int, str]]]:
    """file (relative to root) -> its branches, for every file of PACKAGES."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if str(path.relative_to(root)).startswith(REGISTRY_HOME):
                continue
            hits = sorted(set(branches(path, names)))
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    sys.path.insert(0, str(root))
    found = scan(root, op_names())
    per_package = Counter()
    for file, hits in found.items():
        package = "spmd/passes" if file.startswith("spmd/passes/") else file.split("/")[0]
        per_package[package] += len({line for line, _ in hits})
        print(
            f"{file}: {len({line for line, _ in hits})} lines: "
            + ", ".join(sorted({n for _, n in hits}))
        )
    print(dict(per_package), "total", sum(per_package.values()))


if __name__ == "__main__":
    main()
