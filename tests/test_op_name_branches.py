"""No code outside spmd/ops branches on an op's name (`op.name == "reduce"`): it asks the
op's registry entry (Trait, Linearity, attr_kinds) or looks the op up in its table (a
backend's LOWERINGS, its scalar-code table, a pass's rule table). A new elementwise op is
then its OpDef plus one row per backend table.

The scanner is tests/op_name_branches.py (run it as a script for the per-package counts).
"""

from __future__ import annotations

from pathlib import Path

from op_name_branches import op_names, scan

ROOT = Path(__file__).resolve().parent.parent

# Passes whose subject is one op (or one pattern of ops): matching those ops by name is the
# pass, not a fact about them that belongs on their OpDef.
SUBJECTS = {
    # peephole identities: each rule is keyed by op in a RuleTable and matches its producer
    # (neg of neg, transpose of transpose or of a dot, reshape of reshape)
    "spmd/passes/simplify.py": {"neg", "transpose", "dot_general", "reshape"},
    # merges sibling scans over the same xs and prunes a scan's unread ys
    "spmd/passes/scan_merge.py": {"scan"},
    # inlines remat regions and drops checkpoint_name markers
    "spmd/passes/inline_remat.py": {"remat", "checkpoint_name"},
    # the all-reduce combiner and its inverse (concatenate -> all_reduce -> slices)
    "partitioner/combine.py": {"all_reduce", "concatenate", "slice"},
}
# Not converted yet (issue 16): lines that branch, at most; the numbers only go down.
PENDING: dict[str, int] = {}


def test_no_branch_on_an_op_name_outside_the_registry_and_the_tables():
    found = scan(ROOT, op_names())
    wrong = []
    for file, hits in found.items():
        names = {name for _, name in hits}
        lines = {line for line, _ in hits}
        if file in SUBJECTS:
            extra = names - SUBJECTS[file]
            if extra:
                wrong.append(f"{file}: branches on {sorted(extra)}")
        elif len(lines) > PENDING.get(file, 0):
            wrong.append(f"{file}:{min(lines)}: branches on {sorted(names)} ({len(lines)} lines)")
    assert wrong == [], (
        "ask the op's OpDef (spmd.ops.Trait, Linearity, attr_kinds) or a "
        "table keyed by op instead:\n" + "\n".join(wrong)
    )


def test_the_scanner_finds_a_branch(tmp_path):
    """The scanner is not blind: equality, membership and a named set of op names."""
    code = tmp_path / "backends" / "x.py"
    code.parent.mkdir()
    code.write_text(
        'OPS = frozenset({"exp", "log"})\n'
        "def f(op, name):\n"
        '    if op.name == "reduce" or name in ("add", "mul"):\n'
        "        return op.name in OPS\n"
        '    return op.dtype.name in ("float32",)\n'
    )
    found = scan(tmp_path, op_names())
    assert found == {
        "backends/x.py": [(3, "add"), (3, "mul"), (3, "reduce"), (4, "exp"), (4, "log")]
    }
