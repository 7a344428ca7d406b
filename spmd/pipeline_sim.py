"""spmd.pipeline_sim: a pipeline schedule on the simulated TPU slice. The simulator prices
one stage slot (forward, forward+backward) and one activation shift as spmd.shard_map
programs on the user's mesh; backends/tpu_sim/pipeline.py (reached through spmd.dispatch)
lays the schedule table on a timeline with those costs: step time, bubble fraction, trace.

    >>> import spmd, numpy as np, spmd.numpy as snp
    >>> mesh = spmd.make_mesh((4,), ("pipe",))
    >>> w = np.zeros((4, 256, 256), np.float32)
    >>> r = simulate_pipeline(lambda w, x: snp.tanh(x @ w), w, np.zeros((64, 256), np.float32),
    ...                       num_microbatches=8, mesh=mesh)
    >>> round(r.bubble_fraction, 2), round(3 / (8 + 3), 2)
    (0.27, 0.27)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spmd import sim
from spmd.autodiff import vjp
from spmd.collective_api import ppermute
from spmd.mesh import Mesh
from spmd.named_sharding import NamedSharding, PartitionSpec
from spmd.pipeline_checks import lay_out
from spmd.shard_map import shard_map
from spmd.tracing import type_of
from spmd.tree import tree_flatten, tree_map, tree_unflatten


def simulate_pipeline(
    stage_fn: Callable[[Any, Any], Any],
    stage_params: Any,
    inputs: Any,
    *,
    axis: str = "pipe",
    num_microbatches: int,
    schedule: str = "gpipe",
    stages_per_device: int = 1,
    mesh: Mesh | None = None,
    param_specs: Any = None,
    input_spec: PartitionSpec | None = None,
    recompute: bool | None = None,
    **options: Any,
) -> Any:
    """Simulate one training step of spmd.pipeline / pipeline_value_and_grad on the mesh's
    simulated chips (options go to the simulator: chip=, topology=, ...). A backward slot
    costs the stage's forward+backward minus its forward, or all of it with `recompute`
    (default for 1F1B, whose backward recomputes the stage forward). Returns a PipelineSim:
    step_time_s, bubble_fraction, timeline (to_chrome_trace shows the bubbles)."""
    layout = lay_out(
        stage_params,
        inputs,
        axis=axis,
        num_microbatches=num_microbatches,
        schedule=schedule,
        stages_per_device=stages_per_device,
        mesh=mesh,
        param_specs=param_specs,
        input_spec=input_spec,
        circular_order=False,
    )
    grid, table, p = layout.grid, layout.table, layout.table.devices
    leaves, treedef = layout.leaves, layout.treedef
    pspecs, xspec = layout.param_specs, layout.input_spec
    options.setdefault("check_memory", False)
    one_stage = [
        _shape(x, (p,) + tuple(type_of(x).shape[1:]), grid, s) for x, s in zip(leaves, pspecs)
    ]
    shape = type_of(inputs).shape
    micro = _shape(inputs, (shape[0] // num_microbatches,) + tuple(shape[1:]), grid, xspec)

    def forward(local: list[Any], x: Any) -> Any:
        return stage_fn(_first_chunk(local, treedef), x)

    def forward_backward(local: list[Any], x: Any) -> Any:
        y, back = vjp(stage_fn, _first_chunk(local, treedef), x)
        d_params, dx = back(y)
        return dx, tree_flatten(d_params)[0]

    grad_specs = [PartitionSpec(*tuple(s)[1:]) for s in pspecs]
    f_s = _time(
        shard_map(forward, mesh=grid, in_specs=(pspecs, xspec), out_specs=xspec, check_vma=False),
        one_stage,
        micro,
        options,
    )
    fb_s = _time(
        shard_map(
            forward_backward,
            mesh=grid,
            in_specs=(pspecs, xspec),
            out_specs=(xspec, grad_specs),
            check_vma=False,
        ),
        one_stage,
        micro,
        options,
    )
    ring = [(d, (d + 1) % p) for d in range(p)]
    shift_s = _time(
        shard_map(
            lambda x: ppermute(x, axis, ring),
            mesh=grid,
            in_specs=xspec,
            out_specs=xspec,
            check_vma=False,
        ),
        micro,
        None,
        options,
    )
    recompute = schedule == "1f1b" if recompute is None else recompute
    backward_s = fb_s if recompute else max(fb_s - f_s, 0.0)
    from spmd.dispatch import pipeline_timeline

    return pipeline_timeline(table, f_s, backward_s, shift_s)


def _shape(x: Any, shape: tuple[int, ...], grid: Mesh, spec: PartitionSpec) -> Any:
    """An abstract argument already laid out by its spec (no slicing charged to the slot)."""
    from spmd.api import ShapeDtypeStruct

    return ShapeDtypeStruct(tuple(shape), type_of(x).dtype, NamedSharding(grid, spec))


def _first_chunk(local: list[Any], treedef: Any) -> Any:
    """The device's first stage chunk (one stage: what a slot of the table runs)."""
    from spmd import lax

    return tree_unflatten(
        treedef,
        tree_map(lambda w: lax.squeeze(lax.slice_in_dim(w, 0, 1, axis=0), (0,)), list(local)),
    )


def _time(f: Callable[..., Any], first: Any, second: Any, options: dict[str, Any]) -> float:
    args = (first,) if second is None else (first, second)
    return float(sim.simulate(f, *args, **options).step_time_s)
