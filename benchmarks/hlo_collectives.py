"""Collectives in XLA's HLO text: per collective its kind, the mesh axes its group spans, its
per-device operand bytes, its result shape and the bytes it moves (DESIGN.md's table)."""

from __future__ import annotations

import re

import numpy as np

DTYPE_BYTES = {
    "f32": 4,
    "f16": 2,
    "bf16": 2,
    "f64": 8,
    "s32": 4,
    "s64": 8,
    "u32": 4,
    "u64": 8,
    "s8": 1,
    "u8": 1,
    "pred": 1,
    "s16": 2,
    "u16": 2,
}
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


# -- XLA side: per-device operand bytes of each collective in the optimized HLO ------------


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
        if dtype in DTYPE_BYTES:
            total += DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return total


def _split_definition(rest: str) -> tuple[str, str, str]:
    """'SHAPE op(operands), attrs' -> (shape, op, operands)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = rest[: i + 1], rest[i + 2 :]
    else:
        shape, _, rest = rest.partition(" ")
    op, _, rest = rest.partition("(")
    depth, end = 1, 0
    for end, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
    return shape, op, rest[:end]


def _first_group(attrs: str) -> list[int]:
    """The devices of the group holding device 0, from either replica_groups format."""
    named = re.search(
        r"mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\]T\(([\d,]+)\)\))?"
        r"\s*\{([^}]*)\}",
        attrs,
    )
    if named:
        sizes = [int(s) for s in re.findall(r"=(\d+)", named.group(1))]
        ids = np.arange(int(np.prod(sizes)))
        if named.group(2):
            dims = [int(s) for s in named.group(2).split(",")]
            perm = [int(s) for s in named.group(3).split(",")]
            ids = ids.reshape(dims).transpose(perm)
        ids = ids.reshape(sizes)
        grouped = {int(a) for a in re.findall(r"axis_(\d+)", named.group(4))}
        where = np.argwhere(ids == 0)[0]
        index = tuple(slice(None) if i in grouped else int(where[i]) for i in range(len(sizes)))
        return [int(d) for d in ids[index].ravel()]
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
    if iota:  # [groups, size]<=[dims]T(perm): arange over dims, transposed, in rows
        dims = [int(s) for s in iota.group(3).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if iota.group(4):
            ids = ids.transpose([int(s) for s in iota.group(4).split(",")])
        rows = ids.reshape(int(iota.group(1)), int(iota.group(2)))
        return [int(d) for d in rows[np.argwhere(rows == 0)[0][0]]]
    pairs = re.search(r"source_target_pairs=\{\{(\d+),(\d+)\}", attrs)
    if pairs:
        return [int(pairs.group(1)), int(pairs.group(2))]
    groups = re.search(r"replica_groups=\{\{([\d,]+)\}", attrs)
    return [int(d) for d in groups.group(1).split(",")] if groups else []


def _group_axes(attrs: str, mesh: tuple[int, ...], axes: tuple[str, ...]) -> str:
    coords = [np.unravel_index(d, mesh) for d in _first_group(attrs)]
    if not coords:
        return "?"
    return ",".join(a for i, a in enumerate(axes) if len({c[i] for c in coords}) > 1)


def _moved(kind: str, operand: int, n: int) -> float:
    if kind == "collective-permute":
        return float(operand)
    if n <= 1:
        return 0.0
    return {
        "all-gather": operand * (n - 1),
        "all-reduce": 2 * operand * (n - 1) / n,
        "reduce-scatter": operand * (n - 1) / n,
        "all-to-all": operand * (n - 1) / n,
    }.get(kind, float(operand))


def xla_collectives(
    hlo: str, mesh: tuple[int, ...], axes: tuple[str, ...]
) -> tuple[list[tuple[str, str, int, str, float]], bool]:
    """(kind, axes, operand bytes, result shape, moved bytes) per collective; and whether
    any is in a loop."""
    shapes: dict[str, str] = {}
    found: list[tuple[str, str, int, str, str]] = []
    computation, bodies = "", set()
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            computation = head.group(1)
        bodies.update(re.findall(r"body=%?([\w.\-]+)", line))
        m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$", line)
        if not m:
            continue
        shape, op, operands = _split_definition(m.group(2))
        shapes[m.group(1)] = shape
        kind = op.removesuffix("-start")
        if kind in KINDS and not op.endswith("-done"):
            names = re.findall(r"%([\w.\-]+)", operands)
            found.append((kind, names, m.group(2), shape, computation))
    out = []
    for kind, names, attrs, shape, comp in found:
        nbytes = sum(_shape_bytes(shapes.get(n, "")) for n in names)
        n = len(_first_group(attrs))
        out.append(
            (
                kind,
                _group_axes(attrs, mesh, axes),
                nbytes,
                re.sub(r"\{[\d,]*\}", "", shape) + (" (in loop body)" if comp in bodies else ""),
                _moved(kind, nbytes, n),
            )
        )
    return out, any(comp in bodies for *_, comp in found)
