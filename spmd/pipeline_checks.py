"""Argument checks and layouts shared by spmd.pipeline, spmd.pipeline_value_and_grad and
spmd.simulate_pipeline: the mesh and pipe axis, the stage dim of the parameters, their
specs, the batch split, and the circular (interleaved) stage order; `lay_out` runs them all
on the keyword arguments the three share. Api-level; imports no backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spmd import lax
from spmd.errors import ShapeError, ShardingError
from spmd.mesh import Mesh, current_mesh
from spmd.named_sharding import NamedSharding, P, PartitionSpec
from spmd.pipeline_schedule import Schedule, make_schedule
from spmd.tracing import Tracer, describe_loc, type_of
from spmd.tree import tree_flatten, tree_leaves


@dataclass(frozen=True)
class PipelineLayout:
    """A pipeline's checked arguments: its mesh, the schedule table (its `devices` are the
    pipe axis's), the stage parameters' leaves (stacked stages) and the specs they and the
    inputs map with."""

    grid: Mesh
    table: Schedule
    leaves: list[Any]
    treedef: Any
    param_specs: list[PartitionSpec]
    input_spec: PartitionSpec


def lay_out(
    stage_params: Any,
    inputs: Any,
    *,
    axis: str,
    num_microbatches: int,
    schedule: str,
    stages_per_device: int,
    mesh: Mesh | None,
    param_specs: Any,
    input_spec: PartitionSpec | None,
    circular_order: bool = True,
) -> PipelineLayout:
    """The keyword arguments the pipeline entry points share, checked and laid out (their
    docstrings say what each means). circular_order: the leaves in circular layout (device
    d holds stages d, d+p, ...), as the pipeline runs them; False keeps stage order."""
    grid = mesh_of(mesh, stage_params, inputs)
    p = pipe_size(grid, axis)
    table = make_schedule(schedule, p, num_microbatches, stages_per_device)
    leaves, treedef = tree_flatten(stage_params)
    check_stage_dim(leaves, table.stages)
    if circular_order:
        leaves = [circular(x, p, stages_per_device) for x in leaves]
    pspecs = stage_specs(param_specs, leaves, treedef, grid, axis)
    xspec = input_spec if input_spec is not None else own_spec(inputs, grid, axis)
    check_input(inputs, xspec, grid, axis, num_microbatches)
    return PipelineLayout(grid, table, leaves, treedef, pspecs, xspec)


def like(pred: Any, x: Any) -> Any:
    t = type_of(x)
    return lax.broadcast_in_dim(pred, t.shape, ())


def circular(x: Any, p: int, v: int) -> Any:
    """Stage order -> circular layout: device d's block holds stages d, d+p, ..., d+(v-1)p."""
    if v == 1:
        return x
    t = type_of(x)
    y = lax.reshape(x, (v, p) + t.shape[1:])
    perm = (1, 0) + tuple(range(2, t.ndim + 1))
    return lax.reshape(lax.transpose(y, perm), t.shape)


def mesh_of(mesh: Mesh | None, params: Any, inputs: Any) -> Mesh:
    if mesh is not None:
        return mesh
    if (grid := current_mesh()) is not None:
        return grid
    for leaf in tree_leaves(params) + tree_leaves(inputs):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    raise ShardingError(
        "spmd.pipeline needs a mesh with a pipe axis",
        describe_loc(),
        "pass mesh=spmd.make_mesh((4,), ('pipe',)), call it under "
        "`with spmd.set_mesh(mesh):`, or device_put the parameters",
    )


def pipe_size(grid: Mesh, axis: str) -> int:
    if axis not in grid.axis_names:
        raise ShardingError(
            f"spmd.pipeline: axis {axis!r} is not a mesh axis {grid.axis_names!r}",
            describe_loc(),
            f"pass axis= one of {grid.axis_names!r}, or add a {axis!r} axis",
        )
    return grid.axis_sizes[grid.axis_names.index(axis)]


def check_stage_dim(leaves: list[Any], stages: int) -> None:
    if not leaves:
        raise ShapeError(
            "spmd.pipeline: stage_params has no arrays",
            describe_loc(),
            "pass the stage parameters stacked on a leading stage dim",
        )
    for i, x in enumerate(leaves):
        shape = type_of(x).shape
        if not shape or shape[0] != stages:
            raise ShapeError(
                f"spmd.pipeline: stage_params leaf {i} has shape {shape!r}; its "
                f"leading dim must be the number of stages {stages} (pipe axis "
                f"size x stages_per_device)",
                describe_loc(),
                f"stack the parameters of the {stages} stages on dim 0",
            )


def own_spec(x: Any, grid: Mesh, axis: str) -> PartitionSpec:
    """x's layout: an Array's sharding, or inside jit the one propagation gives the traced
    value (spmd.typeof), without the pipe axis (the pipeline lays that one out itself).
    Replicating a weight the stage body expects sharded would double its psums."""
    sharding = getattr(x, "sharding", None)
    if isinstance(x, Tracer):
        from spmd.explicit import typeof

        sharding = typeof(x).sharding
    if not isinstance(sharding, NamedSharding) or sharding.mesh != grid:
        return P()
    entries = []
    for e in tuple(sharding.spec):
        names = tuple(n for n in ((e,) if isinstance(e, str) else tuple(e or ())) if n != axis)
        entries.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*entries)


def stage_specs(
    given: Any, leaves: list[Any], treedef: Any, grid: Mesh, axis: str
) -> list[PartitionSpec]:
    if given is None:
        specs = [own_spec(x, grid, axis) for x in leaves]
    elif isinstance(given, PartitionSpec):
        specs = [given] * len(leaves)
    else:
        try:
            specs = treedef.flatten_up_to(given)  # a P is a tuple: stop at the params' leaves
        except (ValueError, TypeError) as e:
            raise ShardingError(
                f"spmd.pipeline: param_specs does not match stage_params: {e}",
                describe_loc(),
                "give one P per leaf of stage_params",
            ) from None
    out = []
    for i, spec in enumerate(specs):
        entries = list(spec) + [None] * (type_of(leaves[i]).ndim - len(tuple(spec)))
        lead = entries[0]
        if lead not in (None, axis, (axis,)):
            raise ShardingError(
                f"spmd.pipeline: parameter leaf {i} puts its stage dim on "
                f"{lead!r}; it goes on the pipe axis {axis!r}",
                describe_loc(),
                f"give the leaf spec P({axis!r}, ...)",
            )
        if any(axis in ((e,) if isinstance(e, str) else tuple(e or ())) for e in entries[1:]):
            raise ShardingError(
                f"spmd.pipeline: parameter leaf {i} shards a non-stage dim "
                f"over the pipe axis {axis!r}",
                describe_loc(),
                "shard only the leading stage dim over the pipe axis",
            )
        out.append(P(axis, *entries[1:]))
    return out


def check_input(x: Any, spec: PartitionSpec, grid: Mesh, axis: str, m: int) -> None:
    if len(tree_leaves(x)) != 1:
        raise ShapeError(
            "spmd.pipeline: inputs must be one array (the batch)",
            describe_loc(),
            "pack the stage input into one array, batch first",
        )
    entries = [(e,) if isinstance(e, str) else tuple(e or ()) for e in tuple(spec)]
    if any(axis in e for e in entries):
        raise ShardingError(
            f"spmd.pipeline: inputs are sharded over the pipe axis {axis!r}",
            describe_loc(),
            "shard the batch over another axis (data)",
        )
    shape = type_of(x).shape
    parts = 1
    for name in entries[0] if entries else ():
        parts *= grid.axis_sizes[grid.axis_names.index(name)]
    if not shape or shape[0] % (parts * m):
        raise ShapeError(
            f"spmd.pipeline: batch of shape {shape!r} does not split into "
            f"{m} microbatches on each of {parts} batch shards",
            describe_loc(),
            f"make the batch a multiple of {parts * m}",
        )


def check_stage_output(y: Any, x: Any, tick: int) -> None:
    ty, tx = type_of(y), type_of(x)
    if (ty.shape, ty.dtype) != (tx.shape, tx.dtype):
        raise ShapeError(
            f"spmd.pipeline: stage_fn maps {tx} to {ty}; a pipeline stage must "
            f"keep its input's shape and dtype",
            describe_loc(),
            "make every stage return an array shaped like its input (put "
            "embeddings and the head outside the pipeline)",
        )
