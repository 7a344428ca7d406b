"""How a fused loop reads a member's operand: per dim of a value, the loop dims that index it
(transpose, broadcast and reshape remap them), and the reshape cases that force the loop to be
split (Refine) or the op to stay a view (ReshapeConflict)."""

from __future__ import annotations

import numpy as np

from spmd.ir.graph import Graph, Op

# Per dim of a value: the loop dims that index it, outer first (a reshape may merge several
# loop dims into one value dim); () = the dim is read at index 0.
IndexMap = tuple[tuple[int, ...], ...]


class Refine(Exception):
    """A reshape member needs loop dim `dim` split into `sizes` (the build restarts)."""

    def __init__(self, dim: int, sizes: tuple[int, int]):
        self.dim, self.sizes = dim, sizes


class ReshapeConflict(Exception):
    """Two reshape members need incompatible splits of the loop: `op` stays a view."""

    def __init__(self, op: Op):
        self.op = op


def inner_sizes(dims: tuple[int, ...], sizes: tuple[int, ...]) -> list[int]:
    """For loop dims merged row-major into one index: the product of the sizes after each."""
    return [
        int(np.prod([sizes[e] for e in dims[k + 1 :]], dtype=np.int64)) for k in range(len(dims))
    ]


def transpose_index(graph: Graph, op: Op, index: IndexMap, sizes: tuple[int, ...]) -> IndexMap:
    found: list[tuple[int, ...]] = [()] * graph.types[op.inputs[0]].ndim
    for k, p in enumerate(op.attrs["permutation"]):
        found[p] = index[k]
    return tuple(found)


def broadcast_index(graph: Graph, op: Op, index: IndexMap, sizes: tuple[int, ...]) -> IndexMap:
    shape = graph.types[op.inputs[0]].shape
    return tuple(
        index[d] if n != 1 else () for d, n in zip(op.attrs["broadcast_dimensions"], shape)
    )


def reshape_index(graph: Graph, op: Op, index: IndexMap, sizes: tuple[int, ...]) -> IndexMap:
    """The operand's dims take the result's loop dims in row-major order."""
    shape = graph.types[op.inputs[0]].shape
    queue = [d for dims in index for d in dims if sizes[d] != 1]
    operand: list[tuple[int, ...]] = []
    for n in shape:
        dims: list[int] = []
        while n > 1:
            if not queue:
                raise ReshapeConflict(op)
            d = queue[0]
            if n % sizes[d] == 0:
                dims.append(queue.pop(0))
                n //= sizes[d]
            elif sizes[d] % n == 0:
                raise Refine(d, (n, sizes[d] // n))
            else:
                raise ReshapeConflict(op)
        operand.append(tuple(dims))
    return tuple(operand)
