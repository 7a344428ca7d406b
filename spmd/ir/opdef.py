"""The registry entry of an op: everything true of it on every device, in one place.

`infer` works on types only, `reference` on numpy arrays (the oracle, never calls spmd),
`vjp` is written with spmd.lax so it is traced like user code, and `factors` gives the
op's sharding rule as an einsum-like factor signature. `traits` say what kind of op it is,
`linear` how a partial (pending-sum) operand passes through it, `attr_kinds` what its
attributes spell: passes and backends ask these, never the op's name.

It lives below the op families (spmd/ops/, which fill `REGISTRY`), so the engines their
rules call (spmd.tracing, spmd.autodiff, spmd.passes) import it without loading them: a
graph, a trace or a derivative exists only once the ops are loaded. spmd.ops.opdef
re-exports it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spmd.ir.types import TensorType

Dims = tuple[str | None, ...]  # one factor name per dim; None: the dim maps to no factor


@dataclass(frozen=True)
class Factors:
    """Sharding rule: which factor each operand and result dim is.

    A factor in `reduce` is summed (or maxed...) away: if it is sharded, the result is
    partial over those mesh axes. A factor in `blocked` must not be sharded: the
    partitioner gathers it first. Elementwise ops map each factor to itself. With
    `even_split` (reshape) only operand factors may be sharded, and only where every dim
    they name splits evenly over the mesh axes.
    """

    operands: tuple[Dims, ...]
    results: tuple[Dims, ...]
    reduce: frozenset[str] = frozenset()
    reduce_kind: str = "sum"
    blocked: frozenset[str] = frozenset()
    even_split: bool = False

    @staticmethod
    def parse(signature: str, reduce: str = "", blocked: str = "", kind: str = "sum") -> Factors:
        """Factors.parse("bmk,bkn->bmn", reduce="k"); '_' marks a dim with no factor."""
        lhs, rhs = signature.split("->")

        def dims(s: str) -> Dims:
            return tuple(None if c == "_" else c for c in s)

        return Factors(
            tuple(dims(s) for s in lhs.split(",")) if lhs else (),
            tuple(dims(s) for s in rhs.split(",")),
            frozenset(reduce),
            kind,
            frozenset(blocked),
        )

    def __str__(self) -> str:
        def fmt(d: Dims) -> str:
            return "".join(c or "_" for c in d)

        text = ",".join(map(fmt, self.operands)) + "->" + ",".join(map(fmt, self.results))
        if self.reduce:
            text += f" reduce[{self.reduce_kind}]=" + "".join(sorted(self.reduce))
        if self.blocked:
            text += " blocked=" + "".join(sorted(self.blocked))
        return text


class _NonDiff:
    def __repr__(self) -> str:
        return "NONDIFF"


NONDIFF: Any = _NonDiff()  # marks an op without a derivative (grad through it is an error)
ZERO_GRAD: Any = "zero_grad"  # marks an op whose derivative is zero (comparisons, iota, ...)


class Trait(enum.Flag):
    """What kind of op it is; passes and backends ask these instead of naming ops."""

    NONE = 0
    ELEMENTWISE = enum.auto()  # result[i] = f(operands[i]), operands of one shape: scalar code
    REDUCTION = enum.auto()  # folds whole dims away (reduce, argmax, argmin)
    COLLECTIVE = enum.auto()  # communicates between the devices of a group
    PER_DEVICE = enum.auto()  # its value depends on the device that runs it (collectives too)
    VIEW = enum.auto()  # moves elements, computes none (reshape, transpose, slice, pad ...)
    BROADCAST = enum.auto()  # repeats its one operand: re-emitting it in a layout moves no data
    SOURCE = enum.auto()  # no operands: the value comes from attributes (constant, iota)
    CONTROL = enum.auto()  # runs sub-graphs held in its attributes
    # Its results' layout comes from its attributes or its users, not from its factor rule:
    # sharding propagation passes nothing through it (constant, iota, shard_map).
    OWN_LAYOUT = enum.auto()
    ANNOTATION = enum.auto()  # identity on values, kept so a later pass can read it
    IMPURE = enum.auto()  # two calls with equal inputs may differ, or it acts on the world
    # runs its body `length` times over its xs' leading dim, threading the carries (scan):
    # one body's program stands for every step
    COUNTED_LOOP = enum.auto()
    # its reference runs every device of a mesh itself (splits its operands by its specs,
    # runs the body per device, assembles): outside jit it takes sharded operands whole
    # instead of being jitted and partitioned (shard_map)
    MESH_REFERENCE = enum.auto()


class AttrKind(enum.Enum):
    """What an attribute spells, so a pass rewrites it without knowing the op: the
    partitioner's local attributes and device batching's leading axis (spmd/ops/attrs.py)."""

    DIM = "dim"  # one dim index
    DIMS = "dims"  # a tuple of dim indices
    DIM_MAP = "dim_map"  # one dim index per dim (permutation, broadcast_dimensions)
    SHAPE = "shape"  # the result's shape
    WINDOW = "window"  # per operand dim, an extent; a whole dim stays whole when sharded
    STARTS = "starts"  # per dim, a start index
    STRIDES = "strides"  # per dim, a stride
    PADDING = "padding"  # per dim, (low, high, interior)
    DOT_DIMS = "dot_dims"  # dot_general's ((lhs contract, rhs contract), (lhs batch, rhs batch))


class Linearity(enum.Enum):
    """How an operand pending a reduction over mesh axes (a partial value: every device
    holds a term, the value is their sum) passes through the op, DTensor's partial rules
    written once. A pending max/min/prod passes only through a reduction of that kind."""

    NONE = "none"  # resolve first
    JOINT = "joint"  # f(a1 + a2, b1 + b2) = f(a1, b1) + f(a2, b2): add, neg, transpose, convert
    EACH = "each"  # linear in each operand with the others fixed: mul, dot_general
    FIRST = "first"  # linear in operand 0 only: div by a replicated value, gather, dynamic_slice
    BRANCHES = "branches"  # select: linear in both branches jointly, not in the predicate
    SAME_REDUCTION = "same_reduction"  # a reduce of kind k commutes with a pending k

    def passes(
        self,
        i: int,
        kind: str,
        axes: frozenset[str],
        op_kind: str | None,
        others: Sequence[tuple[frozenset[str], str, frozenset[str]]],
    ) -> bool:
        """Whether operand i, pending a `kind` reduction over `axes`, may stay pending through
        the op. `others`: (pending axes, pending kind, sharded axes) of the other operands in
        order; `op_kind`: the op's own reduction kind (attribute "kind") where it has one."""
        if self is Linearity.SAME_REDUCTION:
            return op_kind == kind
        if kind != "sum":
            return False
        if self is Linearity.JOINT:
            return all(p == axes and k == "sum" for p, k, _ in others)
        if self is Linearity.EACH or (self is Linearity.FIRST and i == 0):
            return all(not p and not axes & used for p, _, used in others)
        if self is Linearity.BRANCHES and i > 0:
            return all(p == axes for p, _, _ in others[1:]) and not others[0][0]
        return False


class NumpyForm(enum.Enum):
    """How an op's generated spmd.numpy function treats its operands before the op."""

    PROMOTE = "promote"  # broadcast and promote (JAX's rules)
    INT_OR_BOOL = "int_or_bool"  # promote, refuse floating-point operands
    FLOAT = "float"  # promote, compute integers in float32


@dataclass(frozen=True)
class Public:
    """The public functions made from an elementwise op's entry (no hand-written wrapper):
    spmd.lax.<lax> with lax semantics (spmd/lax.py) and, where `numpy` is set,
    spmd.numpy.<numpy> with numpy's (spmd/numpy/ufuncs.py)."""

    lax: str
    arity: int  # 1 or 2 operands
    numpy: str = ""
    numpy_form: NumpyForm = NumpyForm.PROMOTE


@dataclass(frozen=True)
class OpDef:
    """One op's registry entry."""

    name: str
    infer: Callable[..., TensorType | tuple[TensorType, ...]]
    reference: Callable[..., Any]
    vjp: Any  # callable(ct, *primals, out=..., **attrs) | NONDIFF | ZERO_GRAD
    factors: Callable[..., Factors]  # (*in_types, **attrs) -> the sharding rule
    multi_output: bool = False
    linear: Linearity = Linearity.NONE  # how a partial operand passes through
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    traits: Trait = Trait.NONE
    attr_kinds: Mapping[str, AttrKind] = field(default_factory=dict)  # see AttrKind
    # Device batching: None when the op cannot run once over a leading axis of independent
    # instances (its attributes shifted by attr_kinds, spmd/ops/attrs.py with_leading_axis);
    # else the operands that must be the same in every instance and stay without the axis
    # (pad's value, gather's indices).
    shared_operands: tuple[int, ...] | None = None
    public: Public | None = None  # the generated public functions, if any
    # Differentiated with residuals kept from its forward (remat), instead of `vjp`: replay
    # (op, inputs) -> (outputs, residuals) and backward (op, out_cts, primals, residuals)
    # -> one cotangent per input (spmd.autodiff).
    residual_vjp: tuple[Callable[..., Any], Callable[..., Any]] | None = None

    def has(self, trait: Trait) -> bool:
        """Whether it has the trait (any of them, for a union). On the ints: Flag's `&` costs
        ~20 us in Python 3.11, and passes ask this once per op."""
        return bool(self.traits._value_ & trait._value_)


# Every op, keyed by name: filled by spmd/ops/__init__.py from the families' OPS lists (here
# so that op families and the engines below them ask about ops without importing them).
REGISTRY: dict[str, OpDef] = {}


def is_impure(name: str) -> bool:
    """Passes must not merge, fold, move or delete it; an op not registered counts."""
    opdef = REGISTRY.get(name)
    return opdef is None or opdef.has(Trait.IMPURE)
