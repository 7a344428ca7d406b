"""SPMD_* environment variables: spmd/config.py is the one module that reads them, and
docs/config.md's table is its VARIABLES table, row for row."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import PACKAGES, ROOT, modules

from spmd import config
from spmd.errors import ConfigError

DOC = ROOT / "docs" / "config.md"
HEADER = "| variable | type | default | meaning |"
READS = {"os.environ.get", "os.getenv", "environ.get"}  # and environ[...], `in environ`


def doc_row(var: config.Variable) -> str:
    kind = f"{var.kind}: {' / '.join(c for c in var.choices if c)}" if var.choices else var.kind
    if var.default in (None, "", ()):
        default = "unset"
    elif isinstance(var.default, bool):
        default = "1" if var.default else "0"
    elif isinstance(var.default, float):
        default = f"{var.default:g}"
    else:
        default = str(var.default)
    return f"| `{var.name}` | {kind} | {default} | {var.meaning} |"


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "SPMD_..." assignments."""
    return {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for t in node.targets
        if isinstance(t, ast.Name)
    }


def _loop_values(tree: ast.Module) -> dict[str, list[str]]:
    """for NAME in ("A", "B"): the strings NAME takes."""
    return {
        node.target.id: [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
        for node in ast.walk(tree)
        if isinstance(node, ast.For)
        and isinstance(node.target, ast.Name)
        and isinstance(node.iter, (ast.Tuple, ast.List))
    }


def direct_reads(path: Path) -> list[str]:
    """SPMD_* variables the file reads from the environment itself (setting or removing one
    for a child process or a benchmark's run is fine)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names, loops = _constants(tree), _loop_values(tree)

    def keys(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name):
            return [names[node.id]] if node.id in names else loops.get(node.id, [])
        return []

    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and ast.unparse(node.func) in READS and node.args:
            key = node.args[0]
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value).endswith("environ")
        ):
            key = node.slice
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(o, (ast.In, ast.NotIn)) for o in node.ops)
            and ast.unparse(node.comparators[-1]).endswith("environ")
        ):
            key = node.left
        found += (
            [
                f"{path.relative_to(ROOT)}:{node.lineno} reads {k}"
                for k in keys(key)
                if k.startswith("SPMD_")
            ]
            if key is not None
            else []
        )
    return found


def test_only_the_config_module_reads_spmd_variables():
    reads = [
        r
        for package in (*PACKAGES, "examples", "benchmarks")
        for path in modules(package)
        if path != ROOT / "spmd" / "config.py"
        for r in direct_reads(path)
    ]
    assert reads == []


def test_the_reads_finder_sees_each_way_of_reading(tmp_path):
    sample = tmp_path / "mod.py"
    sample.write_text(
        'import os\nNAME = "SPMD_A"\nos.environ.get(NAME)\nos.environ["SPMD_B"]\n'
        'os.getenv("SPMD_C", "1")\nif "SPMD_D" in os.environ:\n    pass\n'
        'for n in ("SPMD_E", "OMP_NUM_THREADS"):\n    os.environ.get(n)\n'
        'os.environ["SPMD_F"] = "1"\nos.environ.get("HOME")\n'
    )
    found = [r.split(" reads ")[1] for r in direct_reads_at(sample, tmp_path)]
    assert found == ["SPMD_A", "SPMD_B", "SPMD_C", "SPMD_D", "SPMD_E"]


def direct_reads_at(path: Path, root: Path) -> list[str]:
    """direct_reads for a file outside the repository, sorted by line."""
    original = globals()["ROOT"]
    globals()["ROOT"] = root
    try:
        return sorted(direct_reads(path), key=lambda r: int(r.split(":")[1].split()[0]))
    finally:
        globals()["ROOT"] = original


def test_docs_table_is_the_config_table():
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert rows == [doc_row(v) for v in config.VARIABLES.values()]


@pytest.mark.parametrize(
    "name,raw,value",
    [
        ("SPMD_VERIFY", "1", True),
        ("SPMD_VERIFY", "0", False),
        ("SPMD_VERIFY", "", False),
        ("SPMD_NUM_DEVICES", " 16 ", 16),
        ("SPMD_COLLECTIVE_TIMEOUT", "0.5", 0.5),
        ("SPMD_BACKEND", "cpu", "cpu"),
        ("SPMD_CONFIG_PATH", "a" + ":" + "b", ("a", "b")),
        ("SPMD_LAUNCHER_PID", "", None),
        ("SPMD_RESTART", "0", 0),
    ],
)
def test_values_parse_by_their_type(name, raw, value):
    if name == "SPMD_CONFIG_PATH":
        import os

        raw = raw.replace(":", os.pathsep)
    assert config.env(name, {name: raw}) == value


@pytest.mark.parametrize(
    "name,raw",
    [
        ("SPMD_VERIFY", "yes please"),
        ("SPMD_NUM_DEVICES", "0"),
        ("SPMD_NUM_DEVICES", "eight"),
        ("SPMD_COLLECTIVE_TIMEOUT", "soon"),
        ("SPMD_BACKEND", "gpu-fast"),
        ("SPMD_RESTART", "-1"),
    ],
)
def test_bad_values_are_config_errors_naming_the_variable(name, raw):
    with pytest.raises(ConfigError, match=name) as err:
        config.env(name, {name: raw})
    assert "hint" in str(err.value) or err.value.hint
