"""spmd.shard_map: write the per-device program yourself (JAX's shard_map).

Traces f once on per-device blocks into a body Graph and binds one `shard_map` op
(spmd/ops/spmd_map.py); collectives in the body come from spmd.collective_api.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from spmd.collective_api import mesh_axes
from spmd.errors import InternalError, ShardingError
from spmd.ir.graph import Graph
from spmd.ir.types import TensorType
from spmd.mesh import Mesh, current_mesh
from spmd.named_sharding import PartitionSpec, normalize_spec
from spmd.ops.spmd_map import Spec, block_shape, dim_factor, unmentioned_axes
from spmd.tracing import bind, current_trace, describe_loc, type_of
from spmd.tree import tree_flatten, tree_leaves, tree_unflatten


class _Abstract:
    """A stand-in argument with only a type (trace_to_graph reads `.aval`)."""

    def __init__(self, aval: TensorType):
        self.aval = aval


def shard_map(
    f: Callable[..., Any] | None = None,
    mesh: Mesh | None = None,
    in_specs: Any = None,
    out_specs: Any = None,
    check_rep: bool | None = None,
    *,
    axis_names: Any = frozenset(),
    check_vma: bool | None = None,
) -> Any:
    """Map f over the blocks of its inputs on every device of `mesh`, as jax.shard_map.

    Each input is split by its PartitionSpec (in_specs: a pytree prefix of the args; a single
    P applies to all; None: each Array's own spec, else replicated); f sees one device's block
    and may call spmd.lax collectives; outputs are assembled by out_specs. The mesh is
    `mesh`, else the one of set_mesh / `with mesh:` when the function is called. As in JAX,
    an output may leave a mesh axis out of its spec only if it is the same on every device
    along it (psum'd, or never varied): checked unless check_vma=False. Also usable as
    `@shard_map(in_specs=..., out_specs=...)`. Outside jit, results are laid out by
    out_specs (P() replicated).

        >>> import spmd, numpy as np
        >>> mesh = spmd.make_mesh((8,), ("data",))
        >>> total = shard_map(lambda x: spmd.lax.psum(x, "data"), mesh, spmd.P("data"), spmd.P())
        >>> np.asarray(total(np.arange(8.0))).tolist()
        [28.0]
    """
    check = check_vma if check_vma is not None else check_rep if check_rep is not None else True
    if f is None:
        return functools.partial(
            shard_map,
            mesh=mesh,
            in_specs=in_specs,
            out_specs=out_specs,
            axis_names=axis_names,
            check_vma=check,
        )
    from spmd.validate import check_callable

    check_callable("shard_map", f)
    if out_specs is None:
        raise ShardingError(
            "shard_map needs out_specs",
            describe_loc(),
            "pass out_specs=P(...) (P() for a value replicated on every device)",
        )
    eager = _EagerShardMap(None)

    @functools.wraps(f)
    def run(*args: Any) -> Any:
        grid = mesh if mesh is not None else current_mesh()
        if grid is None:
            raise ShardingError(
                "shard_map needs a mesh",
                describe_loc(),
                "pass mesh=spmd.make_mesh(...), or call it under `with spmd.set_mesh(mesh):`",
            )
        _check_axis_names(axis_names, grid)
        if current_trace() is None:
            return eager.call(traced, grid, args)
        return traced(grid, *args)

    def traced(grid: Mesh, *args: Any) -> Any:
        leaves, treedef = tree_flatten(args)
        names = _leaf_names(args)
        specs = _specs_per_leaf(in_specs, args, "in_specs")
        specs = [_own_spec(x, grid) if s is None else s for s, x in zip(specs, leaves)]
        in_types = [type_of(x) for x in leaves]
        in_dims = [_normalize(s, t.ndim, grid, n) for s, t, n in zip(specs, in_types, names)]
        local = [_local_type(t, d, grid, n) for t, d, n in zip(in_types, in_dims, names)]
        _MARKS.append({})
        from spmd import autodiff

        hook = autodiff.cotangent_hook
        summing = _InvariantCotangents(f, in_dims, grid, _MARKS[-1])
        autodiff.cotangent_hook = summing if check else None
        try:
            with mesh_axes(grid.axis_names, grid.axis_sizes):
                body, out_tree, captured = autodiff.trace_to_graph(
                    summing.body, [_Abstract(t) for t in local], treedef
                )
        finally:
            marks = _MARKS.pop()
            autodiff.cotangent_hook = hook
        outs_shown = tree_unflatten(out_tree, list(range(len(body.results))))
        out_given = _specs_per_leaf(out_specs, outs_shown, "out_specs")
        out_dims = [
            _normalize(s, t.ndim, grid, f"output {j}")
            for j, (s, t) in enumerate(zip(out_given, body.result_types))
        ]
        captured_dims = [((),) * type_of(c).ndim for c in captured]
        if check:
            _check_varying(
                body,
                in_dims + captured_dims,
                out_dims,
                out_given,
                grid,
                marks,
                getattr(f, "__name__", "f"),
            )
        outs = bind(
            "shard_map",
            *leaves,
            *captured,
            body=body,
            axis_names=grid.axis_names,
            axis_sizes=grid.axis_sizes,
            in_specs=tuple(in_dims + captured_dims),
            out_specs=tuple(out_dims),
        )
        eager.out_dims = out_dims
        return tree_unflatten(out_tree, list(outs))

    return run


class _EagerShardMap:
    """shard_map called outside jit: compiled like jit(f), results laid out by out_specs."""

    def __init__(self, jitted: Any):
        self.jitted: dict[Mesh, Any] = {}
        self.out_dims: list[Spec] = []

    def call(self, traced: Callable[..., Any], grid: Mesh, args: tuple) -> Any:
        from spmd.api import JitFunction
        from spmd.dispatch import user_spec
        from spmd.named_sharding import NamedSharding

        if grid not in self.jitted:
            owner = self

            class Jitted(JitFunction):
                def out_shardings_for(self, graph: Graph) -> tuple[Any, ...]:
                    return tuple(NamedSharding(grid, user_spec(d)) for d in owner.out_dims)

            jitted = Jitted(lambda *xs: traced(grid, *xs))
            jitted.__name__ = getattr(traced, "__name__", "shard_map")
            self.jitted[grid] = jitted
        return self.jitted[grid](*args)


class _InvariantCotangents:
    """JAX's rule for grad inside shard_map (with the varying-axes check on): a primal that
    is the same on every device along some axes gets its cotangent summed over them (the
    transpose of the implicit pvary). Handles grads taken in the body itself."""

    def __init__(
        self,
        f: Callable[..., Any],
        in_dims: list[Spec],
        grid: Mesh,
        marks: dict[int, frozenset[str]],
    ):
        self.f = f
        self.param_axes = [frozenset(a for dim in spec for a in dim) for spec in in_dims]
        self.grid = grid
        self.marks = marks
        self.trace: Any = None

    def body(self, *args: Any) -> Any:
        self.trace = current_trace()  # the body's trace: the params are its first values
        return self.f(*args)

    def __call__(self, primals: Sequence[Any], cts: list[Any]) -> list[Any]:
        from spmd.collective_api import psum
        from spmd.tracing import Tracer
        from spmd.varying import ops_varying

        trace = self.trace
        if trace is None or current_trace() is not trace:
            return cts  # a grad in a nested trace (scan, cond...): left as it is
        env = ops_varying(trace.ops, dict(zip(trace.params, self.param_axes)), self.marks)
        out = []
        for p, ct in zip(primals, cts):
            if not isinstance(ct, Tracer) or ct.trace is not trace:
                out.append(ct)
                continue
            mine = (
                env.get(p.id, frozenset())
                if isinstance(p, Tracer) and p.trace is trace
                else frozenset()
            )
            extra = env.get(ct.id, frozenset()) - mine
            axes = tuple(a for a in self.grid.axis_names if a in extra)
            out.append(psum(ct, axes) if axes else ct)
        return out


_MARKS: list[dict[int, frozenset[str]]] = []  # pvary marks of the shard_map bodies being traced


def mark_varying(x: Any, axis_name: Any) -> Any:
    """lax.pvary: x as a new value that varies over `axis_name` (checked against the mesh)."""
    from spmd.collective_api import _resolve
    from spmd.tree import tree_map

    axes, _ = _resolve("pvary", axis_name)

    def one(leaf: Any) -> Any:
        t = type_of(leaf)
        # a fresh value (an identity convert, removed later by the optimizer) carries the mark
        out = bind("convert_element_type", leaf, new_dtype=t.dtype, weak=t.weak)
        if _MARKS and hasattr(out, "id"):
            _MARKS[-1][out.id] = frozenset(axes)
        return out

    return tree_map(one, x)


def _check_varying(
    body: Graph,
    in_dims: list[Spec],
    out_dims: list[Spec],
    out_given: list[Any],
    grid: Mesh,
    marks: dict[int, frozenset[str]],
    name: str,
) -> None:
    from spmd.varying import body_varying, check_out_specs

    param_axes = [frozenset(a for dim in spec for a in dim) for spec in in_dims]
    varies = body_varying(body, param_axes, marks)
    unmentioned = [unmentioned_axes(d, grid.axis_names) for d in out_dims]
    check_out_specs(
        varies,
        unmentioned,
        [s if s is not None else PartitionSpec() for s in out_given],
        grid.axis_names,
        grid.axis_sizes,
        name,
    )


def _own_spec(x: Any, grid: Mesh) -> Any:
    """in_specs=None: an Array keeps its own spec on this mesh; anything else is replicated."""
    from spmd.named_sharding import NamedSharding

    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh == grid:
        return sharding.spec
    return PartitionSpec()


def _check_axis_names(axis_names: Any, grid: Mesh) -> None:
    names = set(axis_names or ())
    if names and names != set(grid.axis_names):
        raise ShardingError(
            f"shard_map(axis_names={sorted(names)!r}) makes only some mesh axes "
            f"manual; spmd's shard_map is manual over all of "
            f"{grid.axis_names!r}",
            describe_loc(),
            "drop axis_names, or give every mesh axis",
        )


def _leaf_names(args: tuple) -> list[str]:
    """A name per leaf of args for error messages: 'argument 1' or 'argument 1, leaf 0'."""
    names = []
    for i, arg in enumerate(args):
        n = len(tree_leaves(arg))
        names += [f"argument {i}" if n == 1 else f"argument {i}, leaf {k}" for k in range(n)]
    return names


def _specs_per_leaf(specs: Any, tree: Any, what: str) -> list[Any]:
    """One spec per leaf of `tree`: `specs` is a pytree prefix of it (P and None are leaves)."""
    if not tree_leaves(tree):
        return []
    if specs is None or isinstance(specs, PartitionSpec):
        return [specs] * len(tree_leaves(tree))
    if isinstance(specs, (tuple, list)) and isinstance(tree, (tuple, list)):
        if len(specs) != len(tree):
            raise ShardingError(
                f"{what} has {len(specs)} entries but there are {len(tree)} values to map",
                describe_loc(),
                f"give one PartitionSpec per value in {what}, or one P for all",
            )
        return [s for spec, sub in zip(specs, tree) for s in _specs_per_leaf(spec, sub, what)]
    if isinstance(specs, dict) and isinstance(tree, dict) and set(specs) == set(tree):
        keys = sorted(tree)  # pytrees flatten dicts in sorted key order
        return [s for k in keys for s in _specs_per_leaf(specs[k], tree[k], what)]
    raise ShardingError(
        f"{what} {specs!r} does not match the structure of the values",
        describe_loc(),
        f"make {what} a pytree prefix of the values, with "
        "PartitionSpec leaves (P(...) for one array, P() for replicated)",
    )


def _normalize(spec: Any, ndim: int, mesh: Mesh, what: str) -> Spec:
    try:
        return normalize_spec(spec if spec is not None else PartitionSpec(), ndim, mesh)
    except ShardingError as err:
        raise ShardingError(f"shard_map {what}: {err.problem}", describe_loc(), err.hint) from None


def _local_type(t: TensorType, spec: Spec, mesh: Mesh, what: str) -> TensorType:
    local = block_shape(t.shape, spec, mesh.axis_names, mesh.axis_sizes)
    if local is not None:
        return t.with_shape(local)
    for dim, (size, axes) in enumerate(zip(t.shape, spec)):
        parts = dim_factor(axes, mesh.axis_names, mesh.axis_sizes)
        if size % parts:
            raise ShardingError(
                f"shard_map {what} of shape {t.shape}: dim {dim} of size {size} does not split "
                f"over mesh axes {axes!r} ({parts} devices)",
                describe_loc(),
                f"make dim {dim} a multiple of {parts} (pad it), or shard it over fewer axes",
            )
    raise InternalError(f"{t} did not split by {spec} yet every dim divides")
