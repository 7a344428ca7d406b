"""The module import graph of our five packages, read from the source (no import runs).

    python tests/import_graph.py     # function-level imports, largest import cycle

An edge a -> b means a's source imports b; importing b also runs the __init__ of every
package above b, so those are edges too (but for the packages above a itself). "At import time" is the module body (if/try/with
blocks included, TYPE_CHECKING blocks not); an import inside a function is "lazy".
tests/test_layering.py checks its rules with this parser.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spmd", "partitioner", "backends", "collectives", "launch")


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported name, line, at import time) for every import in the file; `from a import b`
    gives a.b (a module or a name in a)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = (name or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, int, bool]] = []
    top_level = {id(node) for node in _top_level_nodes(tree)}
    type_checking = {id(node) for node in _type_checking_nodes(tree)}
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
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


def _type_checking_nodes(tree: ast.Module) -> list[ast.AST]:
    return [
        inner
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    ]


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in modules(package)}


def resolve(name: str, known: Iterable[str]) -> str | None:
    """The longest prefix of an imported name that is one of our modules."""
    known = set(known)
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def graph(lazy: bool = True) -> dict[str, set[str]]:
    """module -> modules its import runs (with the packages above them); lazy=False keeps
    only imports at import time."""
    mods = all_modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for imported, _, at_top in imports(path, name):
            target = resolve(imported, mods)
            if target is None or not (at_top or lazy):
                continue
            edges[name] |= ({target} | ancestors(target) - ancestors(name)) & mods.keys()
        edges[name].discard(name)
    return edges


def ancestors(name: str) -> set[str]:
    """The packages above a module, whose __init__ runs first (already running for a module
    of the same package, so those are not edges)."""
    parts = name.split(".")
    return {".".join(parts[:n]) for n in range(1, len(parts))}


def largest_cycle(edges: dict[str, set[str]]) -> list[str]:
    """The largest strongly connected component (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    best: list[str] = []
    for root, children_of_root in edges.items():
        if root in index:
            continue
        work = [(root, iter(sorted(children_of_root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > len(best):
                    best = sorted(component)
    return best if len(best) > 1 else []


def lazy_imports() -> list[tuple[str, int, str]]:
    """(module, line, imported module) for every function-level import of one of ours."""
    mods = all_modules()
    return [
        (name, line, target)
        for name, path in mods.items()
        for imported, line, at_top in imports(path, name)
        if not at_top and (target := resolve(imported, mods)) is not None
    ]


def cycle_breakers(lazy: list[tuple[str, int, str]] | None = None) -> list[tuple[str, int, str]]:
    """The function-level imports that would close an import cycle if moved to the top."""
    eager = graph(lazy=False)
    mods = all_modules()
    out = []
    for name, line, target in lazy_imports() if lazy is None else lazy:
        seen, todo = set(), [target, *(ancestors(target) - ancestors(name)) & mods.keys()]
        while todo:
            node = todo.pop()
            if node == name:
                out.append((name, line, target))
                break
            if node not in seen:
                seen.add(node)
                todo += eager[node]
    return out


def main() -> None:
    lazy = lazy_imports()
    cycle = largest_cycle(graph(lazy=True))
    eager_cycle = largest_cycle(graph(lazy=False))
    print(f"modules: {len(all_modules())}")
    print(f"function-level imports of our modules: {len(lazy)}")
    breakers = cycle_breakers(lazy)
    print(f"  of which break an import cycle: {len(breakers)}")
    print(f"largest import cycle, all imports: {len(cycle)} modules")
    print(f"largest import cycle, import-time imports only: {len(eager_cycle)} modules")
    if "-v" in sys.argv:
        print("\n".join(f"  {m}:{line} -> {t}" for m, line, t in breakers))
        print("cycle:", " ".join(cycle))


if __name__ == "__main__":
    main()
