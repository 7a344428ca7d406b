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
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.cli_options import check, fail, parser, take_simulate_flag
from spmd import config
from spmd.errors import LaunchError, SimulationError

REPO = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 3.0


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    # Ctrl-C stops the job even where the launcher was started with SIGINT ignored (a shell's
    # background job): Python keeps an inherited SIG_IGN, and the ranks would outlive us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    options.simulate = options.simulate or take_simulate_flag(options)
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
