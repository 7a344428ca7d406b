"""The TPU simulator as the API reaches it (spmd.executables, spmd.pipeline_sim): the API
reaches backends only through launch (docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from backends.tpu_sim.abstract import simulate_program
from backends.tpu_sim.chips import load_chip
from backends.tpu_sim.pipeline import schedule_timeline


def simulate(program: Any, mesh: Any, **options: Any) -> Any:
    """Simulate one call of a per-device program on the mesh's TPU slice (one chip when
    mesh is None); a SimReport."""
    if mesh is None:
        return simulate_program(program, (), (), **options)
    return simulate_program(
        program, mesh.axis_names, mesh.axis_sizes, mesh.device_kind, mesh.topology, **options
    )


def chip(name: str) -> Any:
    """The ChipSpec a SimReport's `chip` names (configs/chips/<name>.toml)."""
    return load_chip(name)


def pipeline_timeline(
    schedule: Any, forward_s: float, backward_s: float, shift_s: float = 0.0
) -> Any:
    """A pipeline schedule table laid on the TPU simulator's timeline (spmd.pipeline_sim)."""
    return schedule_timeline(schedule, forward_s, backward_s, shift_s)
