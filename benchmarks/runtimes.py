"""One training step (value_and_grad + SGD; the digits MLP 64-256-10 at batch 128, and a
transformer block) on a 2x4 mesh of 8 devices: our embedded runtime (one process), our mpi,
tcp and ray runtimes (8 processes / actors, each running its compiled per-device program), and
JAX's multi-process CPU runtime (8 processes, jax.distributed on 127.0.0.1, gloo collectives).

Every configuration is started fresh once per round and rounds alternate the configurations
(fair on a shared machine); a process reports the median of its timed samples, the table the
median over rounds.

Run: python benchmarks/runtimes.py [--rounds 3] [--repeat 5] [--number 10] [--only mlp]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("embedded", "mpi", "tcp", "ray", "jax")
CASES = ("mlp", "block")
WARMUP_STEPS = 15  # a dot tries its variants on its first <= 12 calls (backends/cpu/dots.py)
RUN_TIMEOUT_S = 600


def case_inputs(M: Any, case: str) -> tuple[Any, dict, tuple]:
    """(inputs, param specs, loss builder) of a case, the same for both frameworks."""
    if case == "mlp":
        return M.mlp_inputs(128, 64, 256, 10), M.MLP_SPECS, M.mlp_loss
    return M.block_inputs(8, 64, 128, 8, 16, 512), M.BLOCK_SPECS, M.block_loss


def jax_multiprocess() -> Any:
    """JAX over 8 processes: jax.distributed with gloo CPU collectives, one device each."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
    import jax.numpy as jnp
    import models as M
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    def put(x: Any, sharding: Any) -> Any:
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    return M.Framework(
        "jax",
        jnp,
        jax.nn,
        jax.jit,
        jax.value_and_grad,
        jax.tree_util.tree_map,
        mesh,
        NamedSharding,
        PartitionSpec,
        put,
        jax.block_until_ready,
        jax.lax.with_sharding_constraint,
    )


def worker(framework: str, case: str, repeat: int, number: int) -> None:
    """Inside one process of a configuration: time the step; process 0 prints the median."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models as M

    if framework == "jax":
        fw = jax_multiprocess()
        main = int(os.environ["JAX_PROCESS_ID"]) == 0
    else:
        from spmd import config, distributed

        if config.env("SPMD_MESH") and not distributed.is_initialized():
            distributed.initialize()  # under spmd-launch: that runtime
        fw = M.ours()
        main = distributed.process_index() == 0 if distributed.is_initialized() else True
    (params, x, y), specs, loss = case_inputs(M, case)
    params, x, y = M.placed(fw, params, specs, x, y)
    step = fw.jit(M.sgd_step(fw, loss(fw)))
    for _ in range(WARMUP_STEPS):
        params, value = step(params, x, y)
    float(value)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            params, value = step(params, x, y)
        float(value)  # every device finished the last step (the loss is replicated)
        samples.append((time.perf_counter() - start) / number)
    if main:
        print(f"RESULT {framework} {case} {statistics.median(samples):.6e}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(config: str, case: str, repeat: int, number: int) -> float:
    """One fresh start of a configuration; its step time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    args = [case, "--repeat", str(repeat), "--number", str(number)]
    if config == "embedded":
        env.pop("OMP_NUM_THREADS")  # one process owns the machine, like JAX's own runtime
        out = _run([*me, "ours", *args], env)
    elif config == "jax":
        out = _run_jax([*me, "jax", *args], env)
    else:
        launch = [
            sys.executable,
            "-m",
            "launch.cli",
            "--mesh",
            "2x4",
            "--axes",
            "data,model",
            "--runtime",
            config,
        ]
        out = _run([*launch, *me[1:], "ours", *args], env)
    found = re.search(r"RESULT \S+ \S+ (\S+)", out)
    if not found:
        raise RuntimeError(f"{config} {case} printed no result:\n{out[-3000:]}")
    return float(found.group(1))


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT_S,
    )
    return done.stdout + done.stderr


def _run_jax(command: list[str], env: dict[str, str]) -> str:
    env = dict(
        env,
        JAX_COORDINATOR=f"127.0.0.1:{free_port()}",
        JAX_NUM_PROCESSES="8",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    processes = [
        subprocess.Popen(
            command,
            env=dict(env, JAX_PROCESS_ID=str(rank)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(8)
    ]
    outs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in processes]
    return "".join(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--only", choices=CASES)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.repeat, args.number)
        return
    configs = args.configs.split(",")
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for case in [args.only] if args.only else CASES:
        times: dict[str, list[float]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for config in configs:
                times[config].append(run_config(config, case, args.repeat, args.number))
        median = {c: statistics.median(v) for c, v in times.items()}
        print(
            f"\n{case} step on a 2x4 mesh, 8 devices ({args.rounds} rounds from {began}, "
            f"load {os.getloadavg()[0]:.1f})"
        )
        print(
            f"  {'runtime':<10} {'ms/step':>9} {'/ jax mp':>9} {'/ embedded':>11} {'/ mpi':>7}"
            f"   rounds (ms)"
        )
        for config, seconds in median.items():
            ratio = {
                k: seconds / median[k] if k in median else float("nan")
                for k in ("jax", "embedded", "mpi")
            }
            rounds = " ".join(f"{t * 1e3:.2f}" for t in times[config])
            print(
                f"  {config:<10} {seconds * 1e3:9.2f} {ratio['jax']:9.2f} "
                f"{ratio['embedded']:11.2f} {ratio['mpi']:7.2f}   {rounds}"
            )


if __name__ == "__main__":
    main()
