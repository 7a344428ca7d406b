"""A fused kernel's loop nest (KernelSpec) and the transforms applied to it before code
generation: small reductions moved innermost, unit dims dropped, contiguous dims merged; a
reduction's identity. Shared by the CPU and GPU backends (owned by neither).

Imports only spmd.dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spmd import dtypes

SMALL_REDUCTION = 16  # reduced dims up to this many elements loop innermost

# A node of a kernel's expression DAG; every node has a dtype (the value's dtype name):
#   ("load", dtype, arg, strides)   ("const", dtype, value)   ("iota", dtype, strides)
#   ("op", dtype, name, attrs, input_node_ids)
Node = tuple


@dataclass(frozen=True)
class KernelSpec:
    """A fused loop nest over `domain`: loads, an expression DAG, stores and an optional reduce.

    Args are buffers: loads refer to args[0:n_in], stores and the reduce to args[n_in:].
    Strides are in elements per domain dim (0 = broadcast / reduced dim).
    """

    domain: tuple[int, ...]
    arg_dtypes: tuple[str, ...]
    n_in: int
    nodes: tuple[Node, ...]
    stores: tuple[tuple[int, int, tuple[int, ...]], ...]  # (node, arg, strides)
    reduce: tuple[str, int, int, tuple[int, ...]] | None = None  # (kind, node, arg, strides)

    @property
    def reduce_mode(self) -> str:
        """'' (no reduce), 'trailing' (register accumulator) or 'memory' (accumulate in place)."""
        if self.reduce is None:
            return ""
        strides = self.reduce[3]
        reduced = [i for i, s in enumerate(strides) if s == 0]
        if not reduced or reduced == list(range(reduced[0], len(strides))):
            return "trailing"
        return "memory"

    @property
    def splittable(self) -> bool:
        """Whether chunks of the outer dim may run on different threads."""
        if not self.domain:
            return False
        return self.reduce is None or self.reduce[3][0] != 0


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def small_reduction_last(spec: KernelSpec) -> KernelSpec:
    """Loops over reduced dims of at most SMALL_REDUCTION elements moved innermost: the
    stacked runtime's all-reduce sums a leading device dim of 2-8, which would otherwise
    accumulate in memory on one thread; innermost it sums in registers and the kept outer
    dim splits across threads."""
    if spec.reduce_mode != "memory":
        return spec
    reduced = [d for d, s in enumerate(spec.reduce[3]) if s == 0]
    if np.prod([spec.domain[d] for d in reduced]) > SMALL_REDUCTION:
        return spec
    order = [d for d in range(len(spec.domain)) if d not in reduced] + reduced

    def permuted(strides: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(strides[d] for d in order)

    nodes = tuple(
        (*n[:3], permuted(n[3]))
        if n[0] == "load"
        else (n[0], n[1], permuted(n[2]))
        if n[0] == "iota"
        else n
        for n in spec.nodes
    )
    stores = tuple((node, arg, permuted(s)) for node, arg, s in spec.stores)
    return KernelSpec(
        permuted(spec.domain),
        spec.arg_dtypes,
        spec.n_in,
        nodes,
        stores,
        (*spec.reduce[:3], permuted(spec.reduce[3])),
    )


def _stride_vectors(spec: KernelSpec) -> list[tuple[int, ...]]:
    found = [n[3] for n in spec.nodes if n[0] == "load"] + [
        n[2] for n in spec.nodes if n[0] == "iota"
    ]
    found += [s[2] for s in spec.stores]
    if spec.reduce:
        found.append(spec.reduce[3])
    return found


def coalesce(spec: KernelSpec) -> KernelSpec:
    """Drop unit dims and merge adjacent dims every access walks contiguously."""
    if any(n == 0 for n in spec.domain):
        return spec
    keep = [d for d, n in enumerate(spec.domain) if n != 1]
    dims = [[d] for d in keep]
    vectors = _stride_vectors(spec)
    merged: list[list[int]] = []
    for group in dims:
        if merged:
            last, d = merged[-1][-1], group[0]
            if all(v[last] == v[d] * spec.domain[d] for v in vectors):
                merged[-1].append(d)
                continue
        merged.append(group)
    domain = tuple(int(np.prod([spec.domain[d] for d in g])) for g in merged)

    def remap(strides: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(strides[g[-1]] for g in merged)

    nodes = []
    for n in spec.nodes:
        if n[0] == "load":
            n = (*n[:3], remap(n[3]))
        elif n[0] == "iota":
            n = (n[0], n[1], remap(n[2]))
        nodes.append(n)
    stores = tuple((node, arg, remap(s)) for node, arg, s in spec.stores)
    reduce = spec.reduce and (*spec.reduce[:3], remap(spec.reduce[3]))
    return KernelSpec(domain, spec.arg_dtypes, spec.n_in, tuple(nodes), stores, reduce)


def reduce_identity(kind: str, dtype: str) -> Any:
    if kind in ("sum", "or"):
        return 0
    if kind in ("prod", "and"):
        return 1
    if dtype == "bool":
        return int(kind == "min")
    if dtypes.is_float(dtype):
        return float("-inf") if kind == "max" else float("inf")
    bits = 8 * dtypes.itemsize(dtype)
    if dtypes.is_unsigned(dtype):
        return 0 if kind == "max" else (1 << bits) - 1
    return -(1 << (bits - 1)) if kind == "max" else (1 << (bits - 1)) - 1
