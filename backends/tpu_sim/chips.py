"""Chip specs and mesh presets read from configs/*.toml (and $SPMD_CONFIG_PATH dirs).

Imports only spmd.errors, the stdlib and numpy.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from spmd import config
from spmd.errors import SimulationError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
TOPOLOGIES = ("torus3d", "torus2d", "switch")

# TOML table -> fields it must hold; each fact about a chip lives in its TOML file.
REQUIRED: dict[str, tuple[str, ...]] = {
    "compute": ("peak_flops_bf16", "peak_flops_int8", "peak_flops_f32", "mxu_dim", "clock_hz"),
    "memory": ("hbm_bytes", "hbm_bandwidth"),
    "interconnect": (
        "topology",
        "links_per_chip",
        "link_bandwidth",
        "hop_latency_s",
        "max_pod_shape",
        "wrap_axis_multiple",
        "wrap_min_axis",
        "wrap_min_chips",
    ),
}


# Optional tables: calibration of the roofline (1.0 / 0 where a chip file has none, so an
# uncalibrated file prices ops at 100% of spec) and the data-center network between slices.
OPTIONAL: dict[str, dict[str, float]] = {
    "efficiency": {
        "matmul": 1.0,
        "hbm": 1.0,
        "vpu_elements_per_cycle": 0.0,
        "xlu_elements_per_cycle": 0.0,
        "reduce_elements_per_cycle": 0.0,
        "op_overhead_s": 0.0,
        "matmul_overhead_s": 0.0,
        "ici_bandwidth": 1.0,
        "collective_call_s": 0.0,
    },
    "dcn": {"bandwidth": 0.0, "latency_s": 0.0},
    "host": {"bandwidth": 0.0},
}


@dataclass(frozen=True)
class ChipSpec:
    """One accelerator chip: compute peaks, HBM, ICI links and torus wraparound rule."""

    name: str
    description: str
    peak_flops_bf16: float
    peak_flops_int8: float
    peak_flops_f32: float
    mxu_dim: int
    clock_hz: float
    hbm_bytes: int
    hbm_bandwidth: float
    topology: str
    links_per_chip: int
    link_bandwidth: float  # bytes/s, one way, per link
    hop_latency_s: float
    max_pod_shape: tuple[int, ...]
    wrap_axis_multiple: int
    wrap_min_axis: int
    wrap_min_chips: int
    matmul_efficiency: float = 1.0  # fraction of peak a large MXU-bound matmul reaches
    hbm_efficiency: float = 1.0  # fraction of HBM bandwidth a streaming op reaches
    vpu_elements_per_cycle: float = 0.0  # elements a fusion streams per cycle (0: no limit)
    xlu_elements_per_cycle: float = 0.0  # elements a transpose moves across lanes (0: free)
    reduce_elements_per_cycle: float = 0.0  # a reduction's input stream (0: the VPU's rate)
    op_overhead_s: float = 0.0  # fixed cost of one VPU kernel (fusion, copy)
    matmul_overhead_s: float = 0.0  # fixed cost of one MXU kernel
    ici_efficiency: float = 1.0  # fraction of link bandwidth a large collective reaches
    collective_call_s: float = 0.0  # fixed cost of one collective call (sync, setup)
    dcn_bandwidth: float = 0.0  # bytes/s per chip between slices (0: no multi-slice)
    dcn_latency_s: float = 0.0  # per DCN transfer step
    host_bandwidth: float = 0.0  # bytes/s one way per chip to host memory (0: copies free)

    @property
    def ndim(self) -> int:
        """Number of physical torus axes (1 for a switch)."""
        return len(self.max_pod_shape)

    @property
    def max_chips(self) -> int:
        """Chips in the largest pod."""
        return math.prod(self.max_pod_shape)

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for a dtype name; f16/bf16 share a rate, ints use int8's, floats f32's."""
        kind = str(dtype).lower()
        if kind in ("bf16", "bfloat16", "f16", "float16", "fp16"):
            return self.peak_flops_bf16
        if kind in ("int8", "uint8", "i8", "u8", "s8", "int4", "float8_e4m3fn", "float8_e5m2"):
            return self.peak_flops_int8
        if kind in ("f32", "float32", "fp32", "f64", "float64", "int32", "int64", "bool"):
            return self.peak_flops_f32
        raise SimulationError(
            f"chip {self.name!r} has no FLOP rate for dtype {dtype!r}",
            hint="use one of bf16, f16, f32, f64, int8, int32",
        )

    def ideal(self) -> ChipSpec:
        """This chip at 100% of spec: no efficiency factors, overheads or element limits."""
        return replace(
            self,
            matmul_efficiency=1.0,
            hbm_efficiency=1.0,
            vpu_elements_per_cycle=0.0,
            xlu_elements_per_cycle=0.0,
            reduce_elements_per_cycle=0.0,
            op_overhead_s=0.0,
            matmul_overhead_s=0.0,
            ici_efficiency=1.0,
            collective_call_s=0.0,
        )

    def wraps(self, axis_size: int, slice_chips: int) -> bool:
        """Whether a physical axis of this size has a wraparound link in a slice of this size."""
        if self.topology == "switch":
            return True
        if axis_size < max(self.wrap_min_axis, 3) or slice_chips < self.wrap_min_chips:
            return False
        return axis_size % self.wrap_axis_multiple == 0


def config_dirs() -> list[Path]:
    """Directories searched for configs: $SPMD_CONFIG_PATH entries first, then the repo's."""
    return [*map(Path, config.env("SPMD_CONFIG_PATH")), CONFIG_DIR]


def _chip_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for base in config_dirs():
        for sub in (base / "chips", base):
            if not sub.is_dir():
                continue
            for path in sorted(sub.glob("*.toml")):
                if path.stem != "meshes":
                    found.setdefault(path.stem, path)
    return found


def available_chips() -> list[str]:
    """Names of every chip TOML found, sorted."""
    return sorted(_chip_files())


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SimulationError(f"{str(path)!r} is not valid TOML: {e}", hint="fix the file") from e


def load_chip(name: str) -> ChipSpec:
    """Load configs/chips/<name>.toml (or one in $SPMD_CONFIG_PATH) as a ChipSpec.

    >>> load_chip("v5e").mxu_dim
    128
    """
    files = _chip_files()
    if name not in files:
        raise SimulationError(
            f"unknown chip {name!r}; known chips: {', '.join(sorted(files))}",
            hint="write <dir>/chips/<name>.toml and add <dir> to SPMD_CONFIG_PATH",
        )
    path = files[name]
    data = _read_toml(path)
    values: dict = {}
    for table, fields in REQUIRED.items():
        section = data.get(table, {})
        missing = [f for f in fields if f not in section]
        if missing:
            raise SimulationError(
                f"chip file {str(path)!r} lacks [{table}] field(s) {', '.join(missing)}",
                hint=f"copy them from {str(CONFIG_DIR / 'chips' / 'v5e.toml')!r} and edit",
            )
        values.update({f: section[f] for f in fields})
    if values["topology"] not in TOPOLOGIES:
        raise SimulationError(
            f"chip file {str(path)!r} has topology {values['topology']!r}",
            hint=f"use one of {', '.join(TOPOLOGIES)}",
        )
    names = {
        ("efficiency", "matmul"): "matmul_efficiency",
        ("efficiency", "hbm"): "hbm_efficiency",
        ("efficiency", "ici_bandwidth"): "ici_efficiency",
        ("dcn", "bandwidth"): "dcn_bandwidth",
        ("dcn", "latency_s"): "dcn_latency_s",
        ("host", "bandwidth"): "host_bandwidth",
    }
    for table, fields in OPTIONAL.items():
        section = data.get(table, {})
        unknown = sorted(set(section) - set(fields))
        if unknown:
            raise SimulationError(
                f"chip file {str(path)!r} has unknown [{table}] field(s) {', '.join(unknown)}",
                hint=f"use {', '.join(fields)}",
            )
        for key, default in fields.items():
            values[names.get((table, key), key)] = float(section.get(key, default))
    values["max_pod_shape"] = tuple(int(d) for d in values["max_pod_shape"])
    for key in (
        "mxu_dim",
        "hbm_bytes",
        "links_per_chip",
        "wrap_axis_multiple",
        "wrap_min_axis",
        "wrap_min_chips",
    ):
        values[key] = int(values[key])
    return ChipSpec(name=data.get("name", name), description=data.get("description", ""), **values)


def mesh_presets() -> dict[str, tuple[str, tuple[int, ...]]]:
    """Named presets from every meshes.toml: name -> (chip name, physical shape)."""
    presets: dict[str, tuple[str, tuple[int, ...]]] = {}
    for base in reversed(config_dirs()):
        path = base / "meshes.toml"
        if not path.is_file():
            continue
        for key, entry in _read_toml(path).items():
            presets[key] = (entry["chip"], tuple(int(d) for d in entry["shape"]))
    return presets


def load_preset(name: str) -> tuple[ChipSpec, tuple[int, ...]]:
    """A mesh preset such as "v5e-256" as (chip spec, physical shape)."""
    presets = mesh_presets()
    if name not in presets:
        raise SimulationError(
            f"unknown mesh preset {name!r}; known presets: {', '.join(sorted(presets))}",
            hint="add it to configs/meshes.toml or a meshes.toml in SPMD_CONFIG_PATH",
        )
    chip, shape = presets[name]
    return load_chip(chip), shape
