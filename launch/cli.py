"""spmd-launch: run a script on a mesh with the local, mpi, tcp or ray runtime.

Parses and checks the command line (bad input: one line on stderr, exit 2), sets the
SPMD_MESH / SPMD_AXES / SPMD_DEVICE variables spmd.distributed.launch_mesh() reads, then runs
the script in this process (local, ray), under the mpich wheel's mpiexec (mpi), or in one local
child process per device with torchrun's variables (tcp; supervised by launch.processes).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from spmd import config
from spmd.errors import LaunchError, SimulationError

REPO = Path(__file__).resolve().parents[1]
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
STOP_GRACE_S = 3.0
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
        description=__doc__.splitlines()[0],
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


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    options.simulate = options.simulate or _take_simulate_flag(options)
    try:
        shape, names = check(options)
    except LaunchError as exc:
        fail(str(exc).replace("\n", "; "))
    env = {
        "SPMD_MESH": "x".join(map(str, shape)),
        "SPMD_AXES": ",".join(names),
        "SPMD_DEVICE": options.device,
        "SPMD_RUNTIME": options.runtime,
    }
    if options.simulate:
        env["SPMD_SIMULATE"] = "1"
    if options.runtime == "mpi":
        return run_mpi(options, shape, env)
    if options.runtime == "tcp":
        return run_tcp(options, shape, env)
    os.environ.update(env)
    if options.runtime == "local":
        count = config.env("SPMD_NUM_DEVICES")
        os.environ["SPMD_NUM_DEVICES"] = str(max(count, math.prod(shape)))
    return run_here(options, shape)


def _take_simulate_flag(options: argparse.Namespace) -> bool:
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


def run_here(options: argparse.Namespace, shape: tuple[int, ...]) -> int:
    """local and ray: the script runs once, in this process (ray: after starting the actors)."""
    from spmd import distributed

    if options.timeout:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, options.timeout)
    if options.runtime == "ray":
        distributed.initialize(
            "ray",
            num_devices=options.processes or math.prod(shape),
            address=options.address,
            platform=options.device,
        )
    sys.argv = [options.script, *options.args]
    if options.simulate:
        return run_simulated(options)
    try:
        runpy.run_path(options.script, run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        distributed.shutdown()
    return 0


def run_simulated(options: argparse.Namespace) -> int:
    """--simulate: the script runs under spmd.sim.first_step(); then the step's report."""
    import spmd.sim

    stopped_at, code = None, 0
    with spmd.sim.first_step() as programs:
        try:
            runpy.run_path(options.script, run_name="__main__")
        except spmd.sim.SimulationDone as done:
            stopped_at = done.loc or "?"
        except SimulationError as exc:
            sys.stderr.write(f"spmd-launch --simulate: {exc}\n")
            return 1
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not programs:
        sys.stderr.write(
            "spmd-launch --simulate: the script made no jitted call on a "
            f"{options.device} mesh (build it with "
            "spmd.distributed.launch_mesh(), or pass device=)\n"
        )
        return 1
    entries = list(programs.values())
    step = max(entries, key=lambda e: (e.report.step_time_s, e.report.flops))
    tracks = options.trace_devices or step.report.num_devices
    path = step.report.to_chrome_trace(options.trace, max_devices=tracks)
    print(simulation_summary(entries, step, stopped_at, path, tracks), flush=True)
    return code


def simulation_summary(
    entries: list, step: Any, stopped_at: str | None, trace: Path, tracks: int
) -> str:
    """Every simulated program in one line each, then the training step's full report."""
    report = step.report
    lines = [
        (
            f"spmd-launch --simulate: {len(entries)} program(s) simulated; the slowest is "
            "taken as the training step"
        ),
        f"  {'step time':>10} {'MFU':>6} {'peak HBM':>10} {'calls':>5}  called at",
    ]
    for entry in entries:
        r = entry.report
        lines.append(
            f"  {r.step_time_s * 1e3:>7.3f} ms {_percent(r.mfu):>6} "
            f"{r.peak_memory_bytes / 2**20:>6.1f} MiB {entry.calls:>5}  {entry.loc}"
        )
    lines += [
        "",
        f"training step, called at {step.loc}",
        report.table(),
        "",
        f"  {'collective':<28} {'count':>6} {'time':>12} {'MiB/device':>11}",
    ]
    totals: dict[str, list[float]] = {}
    for row in report.ops:
        if row.kind == "collective":
            name = row.op if not row.axes else f"{row.op}[{','.join(row.axes)}]"
            total = totals.setdefault(name, [0, 0.0, 0.0])
            total[0] += row.count
            total[1] += row.time_s
            total[2] += row.bytes
    for name, (count, seconds, nbytes) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {name:<28} {count:>6.0f} {seconds * 1e3:>9.3f} ms {nbytes / 2**20:>11.2f}")
    if not totals:
        lines.append("  (none)")
    step_s = max(report.step_time_s, 1e-30)
    lines += [
        "",
        (
            f"compute {report.compute_time_s / step_s:.1%} of the step, communication "
            f"{report.collective_time_s / step_s:.1%} "
            f"({report.exposed_collective_s / step_s:.1%} exposed); "
            f"MFU {_percent(report.mfu)}; step time {report.step_time_s * 1e3:.3f} ms"
        ),
        (
            f"Chrome trace: {trace} ({min(tracks, report.num_devices)} of "
            f"{report.num_devices} device tracks, identical SPMD schedules; open it in "
            "Perfetto)"
        ),
    ]
    if stopped_at:
        lines.append(
            f"stopped after the first step: the script read a simulated value at {stopped_at}"
        )
    return "\n".join(lines)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _on_alarm(signum: int, frame: object) -> None:
    raise TimeoutError("spmd-launch --timeout expired")


def mpiexec_path() -> str:
    """The mpich wheel's mpiexec (installed next to this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise LaunchError("mpiexec not found", hint="pip install mpich mpi4py")
    return found


def run_mpi(options: argparse.Namespace, shape: tuple[int, ...], env: dict[str, str]) -> int:
    """Runs the ranks under mpiexec; Ctrl-C or --timeout stops every one of them."""
    try:
        command = [mpiexec_path(), "-n", str(options.processes or math.prod(shape))]
    except LaunchError as exc:
        fail(str(exc).replace("\n", "; "))
    if options.hosts:
        command += ["-hosts", options.hosts]
    if options.hostfile:
        command += ["-f", options.hostfile]
    command += [sys.executable, "-m", "launch.mpi_entry", options.script, *options.args]
    path = os.environ.get("PYTHONPATH", "")
    child_env = dict(
        os.environ,
        **env,
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO),
    )
    process = subprocess.Popen(command, env=child_env, start_new_session=True)
    deadline = time.monotonic() + options.timeout if options.timeout else None
    try:
        while True:
            try:
                return process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if deadline is not None and time.monotonic() > deadline:
                sys.stderr.write(
                    f"spmd-launch: --timeout {options.timeout:g} s expired, stopping every rank\n"
                )
                stop(process)
                return 124
    except KeyboardInterrupt:
        stop(process)
        return 130


def run_tcp(options: argparse.Namespace, shape: tuple[int, ...], env: dict[str, str]) -> int:
    """One local process per device, each `python -m launch.tcp_entry script args` (it starts
    the tcp runtime, then runs the script as __main__), supervised until all end."""
    from launch.elastic import restarts_on_remaining_devices
    from launch.processes import run_restarting, torchrun_environments

    path = os.environ.get("PYTHONPATH", "")
    base = dict(os.environ, **env, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))
    command = [sys.executable, "-m", "launch.tcp_entry", options.script, *options.args]
    environments = restarts_on_remaining_devices(
        shape,
        options.min_devices,
        lambda env, size, attempt: torchrun_environments(env, size, restart=attempt),
        base,
    )
    return run_restarting(command, environments, options.timeout, options.max_restarts)


def stop(process: subprocess.Popen) -> None:
    """SIGINT to mpiexec's process group (it forwards to the ranks), SIGKILL after a grace."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    sys.exit(main())
