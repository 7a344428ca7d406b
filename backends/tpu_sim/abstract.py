"""Entry point the dispatcher calls: pick the chip and torus for a mesh, simulate a per-device
program once per (program, options), and keep the last report for `spmd.sim.last_report()`.

Imports only the IR core, spmd.errors and this package.
"""

from __future__ import annotations

from typing import Any

from spmd.errors import SimulationError
from spmd.ir.graph import Graph

from .chips import ChipSpec, load_chip
from .report import SimReport
from .simulate import Simulator
from .topology import topology_for

DEFAULT_CHIP = "v5e"
OPTIONS = (
    "chip",
    "topology",
    "overlap",
    "fuse",
    "check_memory",
    "while_iterations",
    "slices",
    "calibrated",
    "donate",
)
_CACHE: dict[Any, SimReport] = {}
_CACHE_LIMIT = 64


def chip_of(device_kind: str, chip: str | ChipSpec | None = None) -> ChipSpec:
    """The chip of a device kind ("tpu-sim:v5e"), or `chip` when given, else v5e."""
    if isinstance(chip, ChipSpec):
        return chip
    if chip:
        return load_chip(chip)
    if device_kind.startswith("tpu-sim"):
        name = device_kind.partition(":")[2]
        return load_chip(name or DEFAULT_CHIP)
    return load_chip(DEFAULT_CHIP)


def simulate_program(
    program: Graph,
    axis_names: tuple[str, ...],
    axis_sizes: tuple[int, ...],
    device_kind: str = "cpu",
    mesh_topology: str | None = None,
    **options: Any,
) -> SimReport:
    """Simulate one call of a per-device `program` on every chip of the mesh.

    Options: chip= (name or ChipSpec; default from device_kind, else v5e), topology=
    ("4x4x4"; default the mesh's, else laid out from the mesh shape), slices= (pods joined
    by DCN; default: as many as a mesh larger than one pod needs), overlap= (latency-hiding
    schedule: collectives beside independent compute, default True), fuse= (XLA-like
    fusion, default True), calibrated= (the chip's measured efficiencies, default True;
    False prices at 100% of spec), check_memory= (raise SimulationError past HBM, default
    True), while_iterations= (1), donate= (one bool per program param: jit's donated
    arguments, whose buffers die at their last use).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SimulationError(
            f"unknown simulate option(s) {', '.join(map(repr, unknown))}",
            hint=f"use {', '.join(OPTIONS)}",
        )
    chip = chip_of(device_kind, options.pop("chip", None))
    if not options.pop("calibrated", True):
        chip = chip.ideal()
    slices = options.pop("slices", None)
    explicit = options.pop("topology", None) or mesh_topology
    sizes = tuple(int(s) for s in axis_sizes) or (1,)
    names = tuple(axis_names) or ("_",)
    if "donate" in options:
        options["donate"] = tuple(bool(d) for d in options["donate"])
    key = (id(program), chip, explicit, slices, names, sizes, tuple(sorted(options.items())))
    cached = _CACHE.get(key)
    if cached is not None and cached.program is program:
        return cached
    topology = topology_for(chip, sizes, explicit, slices)
    simulator = Simulator(chip, topology, names, sizes, **options)
    report = simulator.run(program)
    report.program = program
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = report
    return report
