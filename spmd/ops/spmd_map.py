"""The `shard_map` op: a per-device body Graph run on every device of a mesh, with global
inputs split and global outputs assembled by partition specs (one tuple of mesh axes per dim).

Its reference splits, runs the body in lockstep (spmd.spmd_interpreter) and assembles; its
VJP is another shard_map whose body is the body's VJP.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.autodiff import backward, replay, trace_flat
from spmd.errors import InternalError, ShapeError, ShardingError
from spmd.ir.graph import Graph
from spmd.ir.types import TensorType
from spmd.mesh import coords_index, device_coords
from spmd.named_sharding import ShardingAttr
from spmd.ops.opdef import Factors, OpDef, Trait
from spmd.passes.dce import dce
from spmd.spmd_interpreter import evaluate_spmd
from spmd.tracing import bind, type_of

Spec = tuple[tuple[str, ...], ...]  # per dim, the mesh axes (major first) that split it


def dim_factor(
    spec_dim: Sequence[str], axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> int:
    """How many blocks a dim split over `spec_dim` has."""
    sizes = dict(zip(axis_names, axis_sizes))
    return math.prod(sizes[a] for a in spec_dim)


def block_shape(
    shape: Sequence[int], spec: Spec, axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> tuple[int, ...] | None:
    """The per-device shape of a global shape split by `spec` (None: it does not divide)."""
    out = []
    for size, axes in zip(shape, spec):
        parts = dim_factor(axes, axis_names, axis_sizes)
        if size % parts:
            return None
        out.append(size // parts)
    return tuple(out)


def global_shape(
    shape: Sequence[int], spec: Spec, axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> tuple[int, ...]:
    """The global shape assembled from per-device blocks of `shape`."""
    return tuple(s * dim_factor(a, axis_names, axis_sizes) for s, a in zip(shape, spec))


def unmentioned_axes(spec: Spec, axis_names: Sequence[str]) -> tuple[str, ...]:
    """Mesh axes over which a value with `spec` is replicated."""
    used = {a for axes in spec for a in axes}
    return tuple(a for a in axis_names if a not in used)


def _block_index(
    spec: Spec, coords: dict[str, int], axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> list[int]:
    """Per dim, which block a device with these mesh coordinates holds (major axis first)."""
    return [coords_index(coords, axes, axis_names, axis_sizes) for axes in spec]


def split_global(
    value: np.ndarray, spec: Spec, axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> list[np.ndarray]:
    """Each device's block of a global value (devices in row-major mesh order)."""
    local = block_shape(value.shape, spec, axis_names, axis_sizes)
    if local is None:
        raise InternalError(f"shape {value.shape} does not split by {spec}")
    blocks = []
    for coords in device_coords(axis_names, axis_sizes):
        index = _block_index(spec, coords, axis_names, axis_sizes)
        blocks.append(value[tuple(slice(i * n, (i + 1) * n) for i, n in zip(index, local))])
    return blocks


def assemble_global(
    blocks: Sequence[np.ndarray], spec: Spec, axis_names: Sequence[str], axis_sizes: Sequence[int]
) -> np.ndarray:
    """The global value of per-device blocks; over an axis `spec` omits, device 0's block."""
    replicated = unmentioned_axes(spec, axis_names)
    local = blocks[0].shape
    out = np.empty(global_shape(local, spec, axis_names, axis_sizes), dtype=blocks[0].dtype)
    for block, coords in zip(blocks, device_coords(axis_names, axis_sizes)):
        if any(coords[a] for a in replicated):
            continue
        index = _block_index(spec, coords, axis_names, axis_sizes)
        out[tuple(slice(i * n, (i + 1) * n) for i, n in zip(index, local))] = block
    return out


def infer_shard_map(
    *in_types: TensorType,
    body: Graph,
    axis_names: tuple[str, ...],
    axis_sizes: tuple[int, ...],
    in_specs: tuple[Spec, ...],
    out_specs: tuple[Spec, ...],
) -> tuple[TensorType, ...]:
    if len(in_types) != len(body.params) or len(in_specs) != len(in_types):
        raise ShapeError(
            f"shard_map got {len(in_types)} inputs, its body takes "
            f"{len(body.params)} and it has {len(in_specs)} in_specs"
        )
    for i, (t, spec, want) in enumerate(zip(in_types, in_specs, body.param_types)):
        local = block_shape(t.shape, spec, axis_names, axis_sizes) if t.ndim == len(spec) else None
        if local is None:
            raise ShardingError(
                f"shard_map input {i} of shape {t.shape} does not split by "
                f"{spec!r} over mesh axes {dict(zip(axis_names, axis_sizes))}",
                hint="make each sharded dim a multiple of its mesh axes' sizes",
            )
        if local != want.shape or t.dtype != want.dtype:
            raise ShapeError(
                f"shard_map input {i}: a {t} splits into blocks of shape {local}, "
                f"its body expects {want}"
            )
    return tuple(
        t.with_shape(global_shape(t.shape, spec, axis_names, axis_sizes))
        for t, spec in zip(body.result_types, out_specs)
    )


def reference_shard_map(
    *args: np.ndarray,
    body: Graph,
    axis_names: tuple[str, ...],
    axis_sizes: tuple[int, ...],
    in_specs: tuple[Spec, ...],
    out_specs: tuple[Spec, ...],
) -> tuple[np.ndarray, ...]:
    n = math.prod(axis_sizes)
    per_input = [
        split_global(np.asarray(a, dtype=dtypes.to_numpy(t.dtype)), spec, axis_names, axis_sizes)
        for a, t, spec in zip(args, body.param_types, in_specs)
    ]
    per_device = [[blocks[d] for blocks in per_input] for d in range(n)]
    outs = evaluate_spmd(body, per_device, axis_names, axis_sizes)
    return tuple(
        assemble_global([outs[d][j] for d in range(n)], spec, axis_names, axis_sizes)
        for j, spec in enumerate(out_specs)
    )


def factors_shard_map(
    *in_types: TensorType, body: Graph, out_specs: tuple[Spec, ...], **_: Any
) -> Factors:
    """Every dim is its own blocked factor: the partitioner inlines the body instead."""
    counter = itertools.count()

    def dims(ndim: int) -> tuple[str, ...]:
        return tuple(f"d{next(counter)}" for _ in range(ndim))

    operands = tuple(dims(t.ndim) for t in in_types)
    results = tuple(dims(t.ndim) for t in body.result_types)
    names = {f for group in operands + results for f in group}
    return Factors(operands, results, blocked=frozenset(names))


def vjp_shard_map(
    cts: tuple[Any, ...],
    *primals: Any,
    out: tuple[Any, ...],
    body: Graph,
    axis_names: tuple[str, ...],
    axis_sizes: tuple[int, ...],
    in_specs: tuple[Spec, ...],
    out_specs: tuple[Spec, ...],
) -> list[Any]:
    """A shard_map of the body's VJP over (primals, cotangents of the outputs)."""
    wrt = [i for i, t in enumerate(body.param_types) if dtypes.is_differentiable(t.dtype)]
    given = [
        j
        for j, (t, ct) in enumerate(zip(body.result_types, cts))
        if ct is not None and dtypes.is_differentiable(t.dtype)
    ]
    if not wrt or not given:
        return [None] * len(primals)
    ct_types = [type_of(cts[j]).with_dtype(body.result_types[j].dtype) for j in given]
    ct_local = [
        t.with_shape(block_shape(t.shape, out_specs[j], axis_names, axis_sizes) or ())
        for t, j in zip(ct_types, given)
    ]
    graph = grad_body(body, axis_names, axis_sizes, in_specs, out_specs, wrt, given, ct_local)
    # the cotangents in the layout the VJP's shard_map reads them in, so the partitioner
    # builds them there (the ones of `.sum()` are a broadcast: else global on every device)
    ct_values = [
        constrain(_cast(cts[j], body.result_types[j].dtype), out_specs[j], axis_names, axis_sizes)
        for j in given
    ]
    results = bind(
        "shard_map",
        *primals,
        *ct_values,
        body=graph,
        axis_names=axis_names,
        axis_sizes=axis_sizes,
        in_specs=in_specs + tuple(out_specs[j] for j in given),
        out_specs=tuple(in_specs[i] for i in wrt),
    )
    grads: list[Any] = [None] * len(primals)
    for i, g in zip(wrt, results):
        grads[i] = g
    return grads


def _cast(x: Any, dtype: str) -> Any:
    return prim.convert_element_type(x, dtype)


def grad_body(
    body: Graph,
    axis_names: tuple[str, ...],
    axis_sizes: tuple[int, ...],
    in_specs: Sequence[Spec],
    out_specs: Sequence[Spec],
    wrt: Sequence[int],
    given: Sequence[int],
    ct_types: Sequence[TensorType],
) -> Graph:
    """The per-device VJP of `body`: params are its params then the cotangents of the results
    in `given`; results are the cotangents of the params in `wrt`.

    An output whose spec leaves out mesh axes came from device 0 along them, so only that
    device gets its cotangent; an input replicated over axes sums its cotangents over them.
    The body's collectives carry their groups, so their VJP rules need no bound mesh axes.
    """
    n = len(body.params)

    def group_of(axes: tuple[str, ...]) -> int:
        return dim_factor(axes, axis_names, axis_sizes)

    def run(*args: Any) -> list[Any]:
        env = replay(body, args[:n])
        cts: list[Any] = [None] * len(body.results)
        for j, ct in zip(given, args[n:]):
            cts[j] = _only_on_first(ct, unmentioned_axes(out_specs[j], axis_names), group_of)
        param_cts = backward(body, env, cts)
        return [
            _sum_over(param_cts[i], unmentioned_axes(in_specs[i], axis_names), group_of)
            for i in wrt
        ]

    graph, captured = trace_flat(run, list(body.param_types) + list(ct_types))
    if captured:
        raise InternalError("the VJP body of a shard_map captured outer values")
    return dce(graph)


def constrain(x: Any, spec: Spec, axis_names: tuple[str, ...], axis_sizes: tuple[int, ...]) -> Any:
    """x with a sharding constraint to `spec`, where a mesh axis splits it (identity on values)."""
    attr = ShardingAttr(axis_names, axis_sizes, spec)
    return bind("sharding_constraint", x, sharding=attr) if any(spec) else x


def _only_on_first(ct: Any, axes: tuple[str, ...], group_of: Callable[..., int]) -> Any:
    """ct on the device at index 0 along `axes`, zeros on the others."""
    if not axes:
        return ct
    index = bind("axis_index", axes=axes, group_size=group_of(axes))
    first = prim.eq(index, 0)
    mask = prim.broadcast_in_dim(first, type_of(ct).shape, ())
    return prim.select(mask, ct, prim.zeros_like(ct))


def _sum_over(ct: Any, axes: tuple[str, ...], group_of: Callable[..., int]) -> Any:
    """ct summed over the devices along `axes` (psum)."""
    if not axes:
        return ct
    return bind("all_reduce", ct, axes=axes, group_size=group_of(axes), kind="sum")


OPS = [
    OpDef(
        "shard_map",
        infer_shard_map,
        reference_shard_map,
        vjp_shard_map,
        factors_shard_map,
        multi_output=True,
        doc="Run a per-device body on every device of a mesh (spmd.shard_map).",
        traits=Trait.CONTROL | Trait.OWN_LAYOUT | Trait.MESH_REFERENCE,
    ),
]
