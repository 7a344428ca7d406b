"""spmd-launch: run a script on a mesh with the local, mpi or ray runtime.

Parses and checks the command line (bad input: one line on stderr, exit 2), sets the
SPMD_MESH / SPMD_AXES / SPMD_DEVICE variables spmd.distributed.launch_mesh() reads, then
runs the script in this process (local, ray) or under the mpich wheel's mpiexec (mpi).
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
from typing import NoReturn

from spmd.errors import LaunchError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = """examples:
  spmd-launch --mesh 2x4 --axes data,model train.py --steps 10
  spmd-launch --mesh 8 --runtime mpi train.py              # 8 MPI ranks, one device each
  spmd-launch --mesh 2x4 --runtime mpi --hosts n1,n2 train.py
  spmd-launch --mesh 2x4 --runtime ray train.py            # local Ray, 8 actors
  spmd-launch --mesh 4x8 --runtime ray --address ray://head:10001 train.py
  spmd-launch --mesh 16x16 --device tpu-sim:v5e --simulate train.py
"""
STOP_GRACE_S = 3.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2 (bad launch input)."""
    sys.stderr.write(f"spmd-launch: error: {message}\n")
    sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="spmd-launch", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mesh", required=True, help="mesh shape, e.g. 8 or 2x4")
    p.add_argument("--axes", help="axis names, e.g. data,model (default: data,model,pipe,...)")
    p.add_argument("--runtime", choices=("local", "mpi", "ray"), default="local")
    p.add_argument("--device", default="cpu", help="cpu, gpu or tpu-sim:<chip>")
    p.add_argument("--processes", type=int, help="MPI ranks or Ray actors (default: mesh size)")
    p.add_argument("--address", help="address of a running Ray cluster (ray runtime)")
    hosts = p.add_mutually_exclusive_group()
    hosts.add_argument("--hosts", help="comma-separated MPI hosts")
    hosts.add_argument("--hostfile", help="MPI hostfile")
    p.add_argument("--timeout", type=float, help="seconds before the whole job is stopped")
    p.add_argument("--simulate", action="store_true",
                   help="simulate the device (tpu-sim) instead of running numerics on it")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def check(options: argparse.Namespace) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(mesh shape, axis names) after checking every option; LaunchError if any is bad."""
    from spmd.distributed import parse_mesh

    shape = parse_mesh(options.mesh)
    defaults = ("data", "model", "pipe", "extra")
    names = tuple(options.axes.split(",")) if options.axes else tuple(
        defaults[i] if i < len(defaults) else f"axis{i}" for i in range(len(shape)))
    if len(names) != len(shape) or len(set(names)) != len(names) or not all(names):
        raise LaunchError(f"--axes {options.axes!r} must give {len(shape)} distinct names "
                          f"for mesh {options.mesh!r}")
    if not re.fullmatch(r"cpu|gpu|tpu-sim:[\w.-]+", options.device):
        raise LaunchError(f"--device {options.device!r} is not cpu, gpu or tpu-sim:<chip>")
    if not Path(options.script).is_file():
        raise LaunchError(f"script {options.script!r} not found")
    if options.processes is not None and options.processes < 1:
        raise LaunchError(f"--processes {options.processes} must be at least 1")
    if options.runtime != "mpi" and (options.hosts or options.hostfile):
        raise LaunchError("--hosts/--hostfile need --runtime mpi")
    if options.address and options.runtime != "ray":
        raise LaunchError("--address needs --runtime ray")
    if options.runtime != "local":
        from launch.runtime import check_launch_mesh

        processes = options.processes or math.prod(shape)
        check_launch_mesh(shape, processes, 1)
    return shape, names


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
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
    os.environ.update(env)
    if options.runtime == "local":
        count = int(os.environ.get("SPMD_NUM_DEVICES", "8") or "8")
        os.environ["SPMD_NUM_DEVICES"] = str(max(count, math.prod(shape)))
    return run_here(options, shape)


def run_here(options: argparse.Namespace, shape: tuple[int, ...]) -> int:
    """local and ray: the script runs once, in this process (ray: after starting the actors)."""
    from spmd import distributed

    if options.timeout:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, options.timeout)
    if options.runtime == "ray":
        distributed.initialize("ray", num_devices=options.processes or math.prod(shape),
                               address=options.address, platform=options.device)
    sys.argv = [options.script, *options.args]
    try:
        runpy.run_path(options.script, run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        distributed.shutdown()
    return 0


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
    child_env = dict(os.environ, **env, OMP_NUM_THREADS="1",
                     PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))
    process = subprocess.Popen(command, env=child_env, start_new_session=True)
    deadline = time.monotonic() + options.timeout if options.timeout else None
    try:
        while True:
            try:
                return process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if deadline is not None and time.monotonic() > deadline:
                sys.stderr.write(f"spmd-launch: --timeout {options.timeout:g} s expired, "
                                 "stopping every rank\n")
                stop(process)
                return 124
    except KeyboardInterrupt:
        stop(process)
        return 130


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
