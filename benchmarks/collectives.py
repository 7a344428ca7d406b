"""nccl-tests style bandwidth table for the collectives transports (MPI vs raw mpi4py, local threads).

Run: OMP_NUM_THREADS=1 mpiexec -n 8 python benchmarks/collectives.py [--max-mb 64]
     OMP_NUM_THREADS=1 python benchmarks/collectives.py --transport local [--devices 8]
     OMP_NUM_THREADS=1 python benchmarks/collectives.py --transport ray [--devices 8]
       (both Ray wires, sockets and object store, and the ratio to our MPI transport, which it
       runs first under mpiexec)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Interleaved timing rounds per size (MPI table): at least ROUNDS, and up to MAX_ROUNDS short ones
# of 4 calls for small messages, so that the best round catches a quiet spell of a shared host.
ROUNDS = 9
MAX_ROUNDS = 25
KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def bus_factor(kind: str, count: int) -> float:
    """busbw / algbw, as in nccl-tests."""
    if kind == "all_reduce":
        return 2 * (count - 1) / count
    return (count - 1) / count


def sizes(max_mb: float) -> list[int]:
    """Total buffer sizes in bytes: 1 KB, 4 KB, ..., max_mb MB."""
    result = []
    size = 1024
    while size <= max_mb * 2**20:
        result.append(size)
        size *= 4
    return result


def iterations(size: int) -> int:
    """Timed iterations per size: many for small messages, few for large ones."""
    return int(max(3, min(100, 2e8 // max(size, 1) // 4)))


def operand(kind: str, size: int, count: int) -> np.ndarray:
    """The per-device input whose 'size' (nccl-tests convention) is size bytes."""
    elements = size // 4
    if kind == "all_gather":
        elements //= count  # size is the gathered output
    elements -= elements % count
    return np.ones(max(elements, count), np.float32)


def row(kind: str, size: int, seconds: float, count: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s."""
    algbw = size / seconds / 1e9
    return algbw, algbw * bus_factor(kind, count)


def run_mpi(max_mb: float) -> None:
    """Our MPICommunicator (watchdog on, and off) against raw mpi4py blocking calls, interleaved."""
    from mpi4py import MPI

    from collectives.mpi import MPICommunicator

    world = MPI.COMM_WORLD
    count = world.Get_size()
    comm = MPICommunicator((count,), ("x",))
    blocking = MPICommunicator((count,), ("x",), timeout=0)
    raw = world.Dup()

    def time_it(fn: Callable[[], object], repeats: int) -> float:
        world.Barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        elapsed = (time.perf_counter() - start) / repeats
        return world.allreduce(elapsed, op=MPI.MAX)

    def best_of(calls: list[Callable[[], object]], repeats: int) -> list[float]:
        """Per call, the best of several rounds that interleave the calls (load spikes hit all)."""
        for fn in calls:
            fn()
        rounds = max(ROUNDS, min(MAX_ROUNDS, repeats // 4))
        per_round = max(1, repeats // rounds)
        times = [[time_it(fn, per_round) for fn in calls] for _ in range(rounds)]
        return [min(column) for column in zip(*times)]

    for kind in KINDS:
        if world.rank == 0:
            print(f"\n# {kind}, {count} MPI ranks, float32")
            print(
                f"{'size':>10} {'ours us':>10} {'busbw':>7} {'raw us':>10} {'busbw':>7} "
                f"{'ratio':>6} {'no-watch us':>11} {'ratio':>6}"
            )
        for size in sizes(max_mb):
            x = operand(kind, size, count)
            ours, plain = mpi_calls(kind, comm, raw, x, count)
            unpolled, _ = mpi_calls(kind, blocking, raw, x, count)
            ours_s, raw_s, blocking_s = best_of([ours, plain, unpolled], iterations(size))
            if world.rank == 0:
                ours_bus = row(kind, size, ours_s, count)[1]
                raw_bus = row(kind, size, raw_s, count)[1]
                print(
                    f"{size:>10} {ours_s * 1e6:>10.1f} {ours_bus:>7.3f} "
                    f"{raw_s * 1e6:>10.1f} {raw_bus:>7.3f} {ours_bus / raw_bus:>6.2f} "
                    f"{blocking_s * 1e6:>11.1f} {raw_s / blocking_s:>6.2f}",
                    flush=True,
                )


def mpi_calls(
    kind: str, comm: object, raw: object, x: np.ndarray, count: int
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(our call, raw mpi4py call with preallocated buffers) for one kind and operand."""
    from mpi4py import MPI

    if kind == "all_reduce":
        out = np.empty_like(x)
        return (lambda: comm.all_reduce(x, "x"), lambda: raw.Allreduce(x, out, MPI.SUM))
    if kind == "all_gather":
        out = np.empty(x.size * count, x.dtype)
        return (lambda: comm.all_gather(x, "x", 0), lambda: raw.Allgather(x, out))
    if kind == "reduce_scatter":
        out = np.empty(x.size // count, x.dtype)
        return (
            lambda: comm.reduce_scatter(x, "x", 0),
            lambda: raw.Reduce_scatter_block(x, out, MPI.SUM),
        )
    out = np.empty_like(x)
    return (lambda: comm.all_to_all(x, "x", 0, 0), lambda: raw.Alltoall(x, out))


def run_local(devices: int, max_mb: float) -> None:
    """Our LocalCommunicator: one thread per device in this process."""
    from collectives import LocalWorld, run_on_devices

    world = LocalWorld((devices,), ("x",))
    for kind in KINDS:
        print(f"\n# {kind}, {devices} local threads, float32")
        print(f"{'size':>10} {'time us':>10} {'algbw':>7} {'busbw':>7}")
        for size in sizes(max_mb):
            program = timed_on_device(kind, size, iterations(size))
            seconds = max(run_on_devices(world, program))
            algbw, busbw = row(kind, size, seconds, devices)
            print(f"{size:>10} {seconds * 1e6:>10.1f} {algbw:>7.3f} {busbw:>7.3f}", flush=True)


def local_call(kind: str, comm: object, x: np.ndarray) -> Callable[[], object]:
    """One collective call of the given kind on comm."""
    if kind == "all_reduce":
        return lambda: comm.all_reduce(x, "x")
    if kind == "all_gather":
        return lambda: comm.all_gather(x, "x", 0)
    if kind == "reduce_scatter":
        return lambda: comm.reduce_scatter(x, "x", 0)
    return lambda: comm.all_to_all(x, "x", 0, 0)


def timed_on_device(kind: str, size: int, repeats: int) -> Callable[[object], float]:
    """A function for run_on_devices (local threads, Ray actors): seconds per call of kind."""

    def program(comm: object) -> float:
        x = operand(kind, size, comm.size)
        call = local_call(kind, comm, x)
        call()
        comm.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        comm.barrier()
        return (time.perf_counter() - start) / repeats

    return program


def mpi_busbw(max_mb: float, devices: int) -> dict[tuple[str, int], float]:
    """Our MPI transport's busbw by (kind, size), from a run of this script under mpiexec."""
    import subprocess

    command = ["mpiexec", "-n", str(devices), sys.executable, __file__, "--max-mb", str(max_mb)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    table: dict[tuple[str, int], float] = {}
    kind = ""
    for line in output.splitlines():
        if line.startswith("# "):
            kind = line.split()[1].rstrip(",")
        elif line.strip() and line.split()[0].isdigit():
            fields = line.split()  # size, ours us, ...: busbw from the time, not the rounded column
            size = int(fields[0])
            table[(kind, size)] = row(kind, size, float(fields[1]) * 1e-6, devices)[1]
    return table


def run_ray(devices: int, max_mb: float) -> None:
    """Our Ray transport on both wires, against our MPI transport's busbw (run first)."""
    from launch.ray import RayRuntime

    mpi = mpi_busbw(max_mb, devices)
    runtime = RayRuntime(num_devices=devices)
    try:
        for kind in KINDS:
            print(f"\n# {kind}, {devices} Ray actors, float32 (busbw GB/s)")
            print(
                f"{'size':>10} {'sockets us':>11} {'busbw':>7} {'objects us':>11} {'busbw':>7} "
                f"{'mpi busbw':>9} {'ray/mpi':>7}"
            )
            for size in sizes(max_mb):
                repeats = max(2, iterations(size) // 4)
                times = {}
                for wire in ("sockets", "objects"):
                    program = timed_on_device(kind, size, repeats)
                    times[wire] = max(runtime.run_on_devices(program, (devices,), ("x",), wire))
                bus = {w: row(kind, size, t, devices)[1] for w, t in times.items()}
                best = max(bus.values())
                reference = mpi.get((kind, size), float("nan"))
                print(
                    f"{size:>10} {times['sockets'] * 1e6:>11.1f} {bus['sockets']:>7.4f} "
                    f"{times['objects'] * 1e6:>11.1f} {bus['objects']:>7.4f} "
                    f"{reference:>9.4f} {best / reference:>7.2f}",
                    flush=True,
                )
    finally:
        runtime.shutdown()


def main() -> None:
    """Parses arguments and runs one transport's table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=("mpi", "local", "ray"), default="mpi")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--max-mb", type=float, default=64)
    args = parser.parse_args()
    if args.transport == "local":
        run_local(args.devices, args.max_mb)
    elif args.transport == "ray":
        run_ray(args.devices, args.max_mb)
    else:
        run_mpi(args.max_mb)


if __name__ == "__main__":
    main()
