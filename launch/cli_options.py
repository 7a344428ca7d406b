"""spmd-launch's command line: its options, their parsing and checking (bad input: one line on
stderr, exit 2); launch/cli.py runs what they ask for."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import NoReturn

from spmd.errors import LaunchError, SimulationError

DESCRIPTION = "spmd-launch: run a script on a mesh with the local, mpi, tcp or ray runtime."
EXAMPLES = """examples:
  spmd-launch --mesh 2x4 --axes data,model train.py --steps 10
  spmd-launch --mesh 8 --runtime mpi train.py              # 8 MPI ranks, one device each
  spmd-launch --mesh 2x4 --runtime mpi --hosts n1,n2 train.py
  spmd-launch --mesh 2x4 --runtime tcp train.py            # 8 local processes, no mpiexec
  spmd-launch --mesh 2x4 --runtime ray train.py            # local Ray, 8 actors
  spmd-launch --mesh 4x8 --runtime ray --address ray://head:10001 train.py
  spmd-launch --mesh 16x16 --device tpu-sim:v5e --simulate train.py

--simulate (with --device tpu-sim:<chip>, local runtime) runs any script unchanged without
data: every jitted call on the tpu-sim mesh is simulated (shapes only, nothing allocated)
and returns placeholders. The script stops cleanly where it first reads one (float(loss)
after its first training step); the launcher then prints the slowest simulated program,
taken as the training step: step time, compute/communication split, MFU, peak HBM per
device, the slowest ops and the collectives, and writes a Chrome trace (--trace; one track
per device, up to --trace-devices; open it in Perfetto). A bare --simulate after the script
is the launcher's too. A step that does not fit in HBM stops with an error
naming the largest live buffers and the lines that made them (exit 1).

--runtime tcp starts one `python script.py args` process per device on this host only (for
several hosts use torchrun or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT by hand), with
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT and OMP_NUM_THREADS=1
unless set. If one process fails, the others are stopped (SIGTERM, then SIGKILL) and the
launcher exits with its code; Ctrl-C or --timeout (exit 124) stops them all. Every process
gets a fresh SPMD_JOB_SECRET: only this job's processes can connect to its sockets (set the
same one on every host yourself when starting ranks by hand or with torchrun). With
--max-restarts N a failed job starts again, up to N times, with SPMD_RESTART=<attempt> set;
a script that saves checkpoints (spmd.checkpoint) restores the latest one and goes on. With
--min-devices M too, each failed process's device is taken as lost: the job continues on a
mesh whose first axis shrinks to fit the devices that remain (never below M devices; SPMD_MESH
tells the script), restoring its checkpoint resharded onto that mesh.
"""
MAX_DEVICES = 1 << 20  # the most devices a mesh may have (spmd.make_mesh's bound too)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2 (bad launch input)."""
    sys.stderr.write(f"spmd-launch: error: {message}\n")
    sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="spmd-launch",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mesh", required=True, help="mesh shape, e.g. 8 or 2x4")
    p.add_argument("--axes", help="axis names, e.g. data,model (default: data,model,pipe,...)")
    p.add_argument("--runtime", choices=("local", "mpi", "tcp", "ray"), default="local")
    p.add_argument("--device", default="cpu", help="cpu, gpu or tpu-sim:<chip>")
    p.add_argument(
        "--processes",
        type=int,
        help="MPI ranks, tcp processes (must be the mesh size) or Ray actors (default: mesh size)",
    )
    p.add_argument("--address", help="address of a running Ray cluster (ray runtime)")
    hosts = p.add_mutually_exclusive_group()
    hosts.add_argument("--hosts", help="comma-separated MPI hosts (tcp: this host only)")
    hosts.add_argument("--hostfile", help="MPI hostfile")
    p.add_argument("--timeout", type=float, help="seconds before the whole job is stopped")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="tcp: start a failed job again up to N times (see below)",
    )
    p.add_argument(
        "--min-devices",
        type=int,
        metavar="N",
        help="tcp, with --max-restarts: restart on the devices that remain, on a "
        "smaller mesh of at least N devices (see below)",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="simulate the script's first step on the tpu-sim device (see below)",
    )
    p.add_argument(
        "--trace",
        default="spmd_trace.json",
        help="--simulate: Chrome trace of the step (default ./spmd_trace.json)",
    )
    p.add_argument(
        "--trace-devices",
        type=int,
        default=16,
        metavar="N",
        help="--simulate: device tracks in the trace (default 16; 0: every device)",
    )
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def check(options: argparse.Namespace) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(mesh shape, axis names) after checking every option; LaunchError if any is bad."""
    from spmd.distributed import parse_mesh

    shape = parse_mesh(options.mesh)
    if math.prod(shape) > MAX_DEVICES:
        raise LaunchError(
            f"--mesh {options.mesh} asks for {math.prod(shape)} devices",
            hint=f"a mesh has at most {MAX_DEVICES} devices",
        )
    if options.timeout is not None and not (math.isfinite(options.timeout) and options.timeout > 0):
        raise LaunchError(
            f"--timeout {options.timeout:g} must be a positive number of seconds",
            hint="e.g. --timeout 600, or leave it out for no limit",
        )
    if options.processes is not None and options.processes > MAX_DEVICES:
        raise LaunchError(f"--processes {options.processes} is more than {MAX_DEVICES}")
    defaults = ("data", "model", "pipe", "extra")
    names = (
        tuple(options.axes.split(","))
        if options.axes
        else tuple(defaults[i] if i < len(defaults) else f"axis{i}" for i in range(len(shape)))
    )
    if len(names) != len(shape) or len(set(names)) != len(names) or not all(names):
        raise LaunchError(
            f"--axes {options.axes!r} must give {len(shape)} distinct names "
            f"for mesh {options.mesh!r}"
        )
    if not re.fullmatch(r"cpu|gpu|tpu-sim:[\w.-]+", options.device):
        raise LaunchError(f"--device {options.device!r} is not cpu, gpu or tpu-sim:<chip>")
    if not Path(options.script).is_file():
        raise LaunchError(f"script {options.script!r} not found")
    if options.processes is not None and options.processes < 1:
        raise LaunchError(f"--processes {options.processes} must be at least 1")
    if options.runtime != "mpi" and (options.hosts or options.hostfile):
        raise LaunchError("--hosts/--hostfile need --runtime mpi")
    if options.max_restarts and options.runtime != "tcp":
        raise LaunchError("--max-restarts needs --runtime tcp")
    if options.max_restarts < 0:
        raise LaunchError(f"--max-restarts {options.max_restarts} must be 0 or more")
    if options.min_devices is not None and not (
        options.max_restarts and 1 <= options.min_devices <= math.prod(shape)
    ):
        raise LaunchError(
            f"--min-devices {options.min_devices} needs --max-restarts and must "
            f"be between 1 and the mesh's {math.prod(shape)} devices"
        )
    if options.address and options.runtime != "ray":
        raise LaunchError("--address needs --runtime ray")
    if options.device == "gpu" and not (options.hosts or options.hostfile or options.address):
        from backends import registry

        registry.check_device("gpu")  # this host runs every device: fail here, not 8 times
    if options.simulate and not (
        options.device.startswith("tpu-sim") and options.runtime == "local"
    ):
        raise LaunchError("--simulate needs --device tpu-sim:<chip> and the local runtime")
    if options.simulate:
        from backends.tpu_sim.chips import load_chip

        try:
            load_chip(options.device.partition(":")[2] or "v5e")
        except SimulationError as exc:
            raise LaunchError(exc.problem, hint=exc.hint) from None
    if options.trace_devices < 0:
        raise LaunchError(f"--trace-devices {options.trace_devices} must be 0 (all) or more")
    if options.runtime == "tcp" and options.processes not in (None, math.prod(shape)):
        raise LaunchError(
            f"--runtime tcp runs one device per process: --processes "
            f"{options.processes} must equal the size {math.prod(shape)} of mesh "
            f"{options.mesh}"
        )
    if options.runtime != "local":
        from launch.runtime import check_launch_mesh

        processes = options.processes or math.prod(shape)
        check_launch_mesh(shape, processes, 1)
    return shape, names


def take_simulate_flag(options: argparse.Namespace) -> bool:
    """A bare --simulate after the script (`spmd-launch ... train.py --simulate`) is ours when
    the device is tpu-sim; one followed by a value stays the script's own option."""
    args = options.args
    if "--simulate" not in args or not options.device.startswith("tpu-sim"):
        return False
    at = args.index("--simulate")
    if at + 1 < len(args) and not args[at + 1].startswith("-"):
        return False
    options.args = args[:at] + args[at + 1 :]
    return True
