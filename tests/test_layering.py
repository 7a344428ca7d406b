"""Dependencies point one way: every import of ours obeys the table of
docs/architecture.md ("Packages and what each may import"), read from the doc itself so the
rules and the map cannot drift apart."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import ROOT, all_modules, cycle_breakers, imports, resolve

DOC = ROOT / "docs" / "architecture.md"
HEADER = "| layer | modules | imports at import time | also inside functions |"


def _names(cell: str) -> list[str]:
    return [n.strip() for n in re.sub(r"\(.*?\)", "", cell).split(",") if n.strip()]


def rules(text: str | None = None) -> dict[str, tuple[list[str], set[str], set[str]]]:
    """layer -> (module prefixes, what it imports at import time, what inside functions)."""
    lines = (DOC.read_text(encoding="utf-8") if text is None else text).splitlines()
    start = lines.index(HEADER) + 2
    table = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        layer, prefixes, eager, lazy = (c.strip() for c in line.strip("|").split("|"))
        table[layer] = (_names(prefixes), set(_names(eager)), set(_names(eager) + _names(lazy)))
    return table


def layer_of(module: str, table: dict[str, tuple[list[str], set[str], set[str]]]) -> str:
    """The row whose module prefix matches longest."""
    best, length = "", -1
    for layer, (prefixes, _, _) in table.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = layer, len(p)
    return best


def allowed(target: str, names: set[str], table: dict) -> bool:
    return layer_of(target, table) in names or any(
        target == n or target.startswith(n + ".") for n in names
    )


def violations() -> list[str]:
    table = rules()
    mods = all_modules()
    bad = []
    for name, path in mods.items():
        layer = layer_of(name, table)
        _, eager, lazy = table[layer]
        for imported, line, at_top in imports(path, name):
            target = resolve(imported, mods)
            if target is None or target == "spmd":  # the facade package itself: no imports
                continue
            if not allowed(target, eager if at_top else lazy, table):
                when = "at import time" if at_top else "inside a function"
                bad.append(
                    f"{path.relative_to(ROOT)}:{line} ({layer}) imports {target} "
                    f"({layer_of(target, table)}) {when}"
                )
    return bad


def test_every_import_obeys_the_architecture_table():
    assert violations() == []


# Function-level imports that would close an import cycle if moved to the top (one per name
# imported): the two doors of docs/architecture.md (eager; runtime_state to launch) and no
# other; the count only goes down.
CYCLE_BREAKERS = 3


def test_no_more_function_level_imports_break_a_cycle():
    found = cycle_breakers()
    assert len(found) <= CYCLE_BREAKERS, "\n".join(f"{m}:{line} -> {t}" for m, line, t in found)


def test_the_table_names_every_package_and_only_known_layers():
    table = rules()
    assert {layer_of(m, table) for m in all_modules()} <= set(table)
    assert "" not in {layer_of(m, table) for m in all_modules()}
    named = {n for _, eager, lazy in table.values() for n in eager | lazy}
    mods = all_modules()
    assert all(n in table or n in mods for n in named), named - set(table) - set(mods)


def test_core_modules_never_reach_the_api_at_import_time():
    table = rules()
    core = [m for m in all_modules() if layer_of(m, table) == "core"]
    assert "spmd.tracing" in core and "spmd.ops.opdef" in core and "spmd.api" not in core
    assert table["core"][1] <= {"core", "door"} and table["door"][1] == set()


def test_rules_parser_reads_a_table_and_picks_the_longest_prefix():
    rows = [
        "x",
        HEADER,
        "|---|---|---|---|",
        "| core | spmd.ir, spmd.ops | core | facade (a debt) |",
        "| facade | spmd | core, facade | |",
        "",
        "| not | a | row | |",
    ]
    text = "\n".join(rows)
    table = rules(text)
    assert table == {
        "core": (["spmd.ir", "spmd.ops"], {"core"}, {"core", "facade"}),
        "facade": (["spmd"], {"core", "facade"}, {"core", "facade"}),
    }
    assert layer_of("spmd.ops.elementwise", table) == "core"
    assert layer_of("spmd.api", table) == "facade"
    assert layer_of("spmd.opsx", table) == "facade"


@pytest.mark.parametrize(
    "source,expected",
    [
        (
            (
                "import os\nfrom . import sibling\nfrom ..ir import graph\n"
                "try:\n    import backends.cpu\nexcept ImportError:\n    pass\n"
                "def f():\n    from launch import local\n"
            ),
            [
                ("os", 1, True),
                ("spmd.passes.sibling", 2, True),
                ("spmd.ir.graph", 3, True),
                ("backends.cpu", 5, True),
                ("launch.local", 9, False),
            ],
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import launch.runtime\n",
            [("typing.TYPE_CHECKING", 1, True)],
        ),
    ],
)
def test_import_parser_sees_relative_lazy_and_type_checking_imports(tmp_path, source, expected):
    sample = tmp_path / "mod.py"
    sample.write_text(source)
    assert imports(sample, "spmd.passes.mod") == expected
