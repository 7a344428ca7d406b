"""spmd.numpy.einsum: any subscripts (ellipsis, implicit output, diagonals) lowered to
dot_general + reduce + transpose, contracting the operands left to right.
"""

from __future__ import annotations

from typing import Any

from spmd import lax
from spmd.errors import ShapeError
from spmd.numpy.core import asarray, promote_dtypes
from spmd.tracing import type_of

_ELLIPSIS_LABELS = "0123456789@#$%&"  # labels for ellipsis dims, never used by subscripts


def _parse(subscripts: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Expand '...' into per-dim labels and make the output explicit."""
    text = subscripts.replace(" ", "")
    lhs, arrow, out = text.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(shapes):
        raise ShapeError(
            f"einsum {subscripts!r} names {len(inputs)} operands but got {len(shapes)}"
        )
    n_ell = max(
        (len(s) - len(spec.replace("...", "")) for spec, s in zip(inputs, shapes) if "..." in spec),
        default=0,
    )
    if n_ell > len(_ELLIPSIS_LABELS):
        raise ShapeError(f"einsum: too many ellipsis dims ({n_ell})")
    expanded = []
    for spec, shape in zip(inputs, shapes):
        if "..." in spec:
            k = len(shape) - len(spec.replace("...", ""))
            spec = spec.replace("...", _ELLIPSIS_LABELS[n_ell - k : n_ell] if k else "")
        if len(spec) != len(shape) or not all(c.isalpha() or c in _ELLIPSIS_LABELS for c in spec):
            raise ShapeError(f"einsum subscripts {spec!r} do not fit an operand of shape {shape}")
        expanded.append(spec)
    ell = _ELLIPSIS_LABELS[:n_ell]
    if not arrow:
        counts = {c: "".join(expanded).count(c) for c in set("".join(expanded))}
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        out = out.replace("...", ell)
    for c in out:
        if not any(c in spec for spec in expanded):
            raise ShapeError(f"einsum output label {c!r} appears in no operand ({subscripts!r})")
    return expanded, out


def _label_sizes(specs: list[str], shapes: list[tuple[int, ...]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for spec, shape in zip(specs, shapes):
        for c, n in zip(spec, shape):
            known = sizes.get(c)
            if known is None or known == 1:
                sizes[c] = n
            elif n not in (1, known):
                raise ShapeError(f"einsum label {c!r} has sizes {known} and {n}")
    return sizes


def _drop_broadcast_dims(x: Any, spec: str, sizes: dict[str, int]) -> tuple[Any, str]:
    """A size-1 dim whose label is larger elsewhere broadcasts: drop it from this operand."""
    shape = type_of(x).shape
    keep = [i for i, c in enumerate(spec) if not (shape[i] == 1 and sizes[c] != 1)]
    if len(keep) == len(spec):
        return x, spec
    return lax.reshape(x, tuple(shape[i] for i in keep)), "".join(spec[i] for i in keep)


def _take_diagonal(x: Any, spec: str) -> tuple[Any, str]:
    """A label repeated in one operand selects the diagonal: mask, then sum the copy away."""
    while len(set(spec)) != len(spec):
        c = next(c for c in spec if spec.count(c) > 1)
        i = spec.index(c)
        j = spec.index(c, i + 1)
        shape = type_of(x).shape
        same = lax.eq(lax.iota("int32", shape, i), lax.iota("int32", shape, j))
        x = lax.select(same, x, lax.full(shape, 0, type_of(x).dtype))
        x = lax.reduce_sum(x, (j,))
        spec = spec[:j] + spec[j + 1 :]
    return x, spec


def _sum_out(x: Any, spec: str, keep: set[str]) -> tuple[Any, str]:
    axes = tuple(i for i, c in enumerate(spec) if c not in keep)
    if not axes:
        return x, spec
    return lax.reduce_sum(x, axes), "".join(c for c in spec if c in keep)


def _contract(x: Any, xs: str, y: Any, ys: str, keep: set[str]) -> tuple[Any, str]:
    """One dot_general: shared labels still needed are batch, the other shared ones contract."""
    batch = [c for c in xs if c in ys and c in keep]
    contract = [c for c in xs if c in ys and c not in keep]
    dims = (
        (tuple(xs.index(c) for c in contract), tuple(ys.index(c) for c in contract)),
        (tuple(xs.index(c) for c in batch), tuple(ys.index(c) for c in batch)),
    )
    out = lax.dot_general(x, y, dims)
    labels = "".join(batch) + "".join(c for c in xs if c not in ys)
    labels += "".join(c for c in ys if c not in xs)
    return out, labels


def einsum(subscripts: str, *operands: Any) -> Any:
    """numpy.einsum over any subscripts; more than two operands contract left to right.

    >>> import spmd.numpy as snp
    >>> snp.einsum("ij,jk->ik", snp.ones((2, 3)), snp.ones((3, 4))).shape
    (2, 4)
    """
    values = promote_dtypes(*[asarray(a) for a in operands])
    shapes = [type_of(v).shape for v in values]
    specs, out = _parse(subscripts, shapes)
    sizes = _label_sizes(specs, shapes)
    items = []
    for v, spec in zip(values, specs):
        v, spec = _drop_broadcast_dims(v, spec, sizes)
        items.append(_take_diagonal(v, spec))
    # Sum labels needed by no one else before contracting (keeps the dots small).
    x, xs = items[0]
    later = set(out).union(*(s for _, s in items[1:]))
    x, xs = _sum_out(x, xs, later)
    for k, (y, ys) in enumerate(items[1:], start=1):
        after = set(out).union(*(s for _, s in items[k + 1 :]))
        y, ys = _sum_out(y, ys, after | set(xs))
        x, xs = _sum_out(x, xs, after | set(ys))
        x, xs = _contract(x, xs, y, ys, after)
    x, xs = _sum_out(x, xs, set(out))
    return lax.transpose(x, tuple(xs.index(c) for c in out))
