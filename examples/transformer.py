"""A small GPT (decoder-only, character level) on examples/data: Megatron tensor parallel over
'model' (attention heads, MLP column/row-parallel) and data parallel over 'data'; with
--pipeline P its layers split into P stages over a 'pipe' axis (spmd.pipeline, GPipe).

Run: python3 examples/transformer.py [--steps 60] [--mesh 2x4]
     python3 examples/transformer.py --mesh 2x2x2 --pipeline 2 [--microbatches 4]
     python3 examples/transformer.py --simulate tpu-sim:v5e --mesh 16x16
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the model lives in gpt_model.py (this folder is on sys.path above); the names marked F401
# are re-exported: tests and users reach the whole model through this module
from gpt_model import (
    Config,
    block,  # noqa: F401
    flops_per_token,
    forward,  # noqa: F401
    init_params,
    layers_in_sequence,  # noqa: F401
    loss_fn,
    param_shapes,
    param_shardings,
    parameter_count,
    sharding,
    unstaged,  # noqa: F401
)

import spmd
import spmd.optim
import spmd.random
from spmd import NamedSharding, P
from spmd.data import DataLoader

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "python_reference.txt")
PEAK_FLOPS = 2 * 32e9  # nominal: 2 cores x ~32 GFLOP/s float32


# -- data and mesh ---------------------------------------------------------------------------


def load_corpus(config: Config, path: str = CORPUS) -> np.ndarray:
    """Windows of context+1 characters (byte values; the corpus is ASCII), one per row."""
    with open(path, "rb") as f:
        tokens = np.frombuffer(f.read(), np.uint8).astype(np.int32) % config.vocab
    rows = (len(tokens) - 1) // config.context
    starts = np.arange(rows) * config.context
    return tokens[starts[:, None] + np.arange(config.context + 1)]


def parse_mesh(text: str | None, device: str = "cpu", pipeline: int = 1) -> spmd.Mesh | None:
    """'2x4' -> Mesh (data=2, model=4); '8' -> Mesh (data=8); '1' -> None (one device).
    With pipeline P > 1: '2x2x2' -> (data=2, pipe=2, model=2), the pipe size must be P."""
    if pipeline > 1:
        text = text or f"{max(spmd.device_count() // (2 * pipeline), 1)}x{pipeline}x2"
        shape = tuple(int(n) for n in text.lower().split("x"))
        if len(shape) != 3 or shape[1] != pipeline:
            raise SystemExit(f"--pipeline {pipeline} needs --mesh DATAx{pipeline}xMODEL")
        return spmd.make_mesh(shape, ("data", "pipe", "model"), device=device)
    if text is None:
        text = "2x4" if spmd.device_count() >= 8 else str(spmd.device_count())
    shape = tuple(int(n) for n in text.lower().split("x"))
    if math.prod(shape) == 1 and device == "cpu":
        return None
    return spmd.make_mesh(shape, ("data", "model")[: len(shape)], device=device)


def make_optimizer(config: Config) -> Any:
    schedule = spmd.optim.warmup_cosine(config.learning_rate, config.warmup_steps, config.steps)
    return spmd.optim.adamw(
        schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=config.weight_decay, clip_norm=1.0
    )


def make_train_step(
    optimizer: Any, mesh: spmd.Mesh | None, params: Any, opt_state: Any, microbatches: int = 1
) -> Any:
    """The jitted step (params, opt_state, batch) -> (params, opt_state, loss)."""

    def step(params: Any, opt_state: Any, batch: Any) -> Any:
        loss, grads = spmd.value_and_grad(loss_fn)(params, batch, mesh, microbatches)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, loss

    if mesh is None:
        return spmd.jit(step)
    replicated = NamedSharding(mesh, P())
    return spmd.jit(
        step,
        out_shardings=(
            _shardings_of(params, replicated),
            _shardings_of(opt_state, replicated),
            replicated,
        ),
    )


def _shardings_of(tree: Any, default: NamedSharding) -> Any:
    def of(leaf: Any) -> Any:
        found = getattr(leaf, "sharding", None)
        return found if isinstance(found, NamedSharding) else default

    return spmd.tree_map(of, tree)


# -- training and simulation -----------------------------------------------------------------


@dataclasses.dataclass
class Result:
    params: dict[str, Any]
    losses: list[float]
    seconds: float
    tokens_per_second: float


def train(config: Config, mesh: spmd.Mesh | None, *, progress: bool = True) -> Result:
    """config.steps of AdamW on random windows of the corpus; prints loss, tokens/s and MFU."""
    windows = load_corpus(config)
    loader = DataLoader(
        {"tokens": windows},
        config.batch_size,
        mesh=mesh,
        batch_axis="data" if mesh is not None else None,
        seed=config.seed,
    )
    optimizer = make_optimizer(config)
    params = init_params(config, mesh)
    opt_state = optimizer.init(params)
    step_fn = make_train_step(optimizer, mesh, params, opt_state, config.microbatches)
    tokens_per_step = config.batch_size * config.context
    losses: list[float] = []
    batches = loader.forever()
    began = time.perf_counter()
    timed_from, timed_steps = began, 0
    for step in range(config.steps):
        params, opt_state, loss = step_fn(params, opt_state, next(batches)["tokens"])
        losses.append(float(loss))
        if step == 0:
            timed_from = time.perf_counter()  # the first step compiles: leave it out of rates
        else:
            timed_steps += 1
        rate = timed_steps * tokens_per_step / max(time.perf_counter() - timed_from, 1e-9)
        if progress and (step % 10 == 0 or step == config.steps - 1):
            mfu = rate * flops_per_token(config) / PEAK_FLOPS
            print(
                f"step {step:4d}  loss {losses[-1]:.3f}  {rate:8.0f} tokens/s  MFU {mfu:6.2%}",
                flush=True,
            )
    seconds = time.perf_counter() - began
    rate = timed_steps * tokens_per_step / max(time.perf_counter() - timed_from, 1e-9)
    return Result(params, losses, seconds, rate)


def simulate(config: Config, mesh: spmd.Mesh) -> Any:
    """The same train step, partitioned for `mesh` and run by the TPU simulator (no data)."""
    import spmd.sim

    optimizer = make_optimizer(config)
    params = spmd.sim.abstract_args([param_shapes(config)], [param_shardings(mesh)])[0]
    with spmd.sim.abstract():
        opt_state = _sharded_like(spmd.jit(optimizer.init)(params), params, mesh)
    batch = spmd.ShapeDtypeStruct(
        (config.batch_size, config.context + 1), "int32", sharding(mesh, "data", None)
    )
    step_fn = make_train_step(optimizer, mesh, params, opt_state)
    return spmd.sim.simulate(step_fn, params, opt_state, batch)


def _sharded_like(state: Any, params: Any, mesh: spmd.Mesh) -> Any:
    """Abstract optimiser state whose param-shaped subtrees (moments) take the params' layout."""
    import spmd.sim

    if spmd.tree_structure(state) == spmd.tree_structure(params):
        return spmd.sim.abstract_args([state], [param_shardings(mesh)])[0]
    if isinstance(state, dict):
        return {name: _sharded_like(value, params, mesh) for name, value in state.items()}
    return state


# A GPT of about 600M parameters: what --simulate models on a pod unless sizes are given.
POD_CONFIG = Config(vocab=256, context=1024, width=2048, heads=16, layers=12, batch_size=128)


def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("steps", "batch-size", "context", "width", "heads", "layers"):
        parser.add_argument(f"--{name}", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument(
        "--mesh",
        default=None,
        help="DATAxMODEL, e.g. 2x4 (default 2x4); DATAxPIPExMODEL with --pipeline",
    )
    parser.add_argument("--pipeline", type=int, default=None, help="pipeline stages ('pipe')")
    parser.add_argument("--microbatches", type=int, default=None)
    parser.add_argument(
        "--simulate",
        default=None,
        metavar="tpu-sim:CHIP",
        help="simulate one step on this chip kind (e.g. tpu-sim:v5e)",
    )
    parser.add_argument(
        "--peak-gflops",
        type=float,
        default=PEAK_FLOPS / 1e9,
        help="the peak the MFU estimate divides by",
    )
    args = parser.parse_args(argv)
    launched = spmd.config.env("SPMD_SIMULATE")  # spmd-launch --device tpu-sim:X --simulate
    if launched and args.simulate is None:
        args.simulate = spmd.config.env("SPMD_DEVICE")
        args.mesh = args.mesh or spmd.config.env("SPMD_MESH") or None
    base = POD_CONFIG if args.simulate else Config()
    given = {
        field: getattr(args, field)
        for field in (
            "steps",
            "batch_size",
            "context",
            "width",
            "heads",
            "layers",
            "learning_rate",
            "pipeline",
            "microbatches",
        )
    }
    config = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if config.pipeline > 1 and (args.simulate or config.layers % config.pipeline):
        parser.error("--pipeline P trains on a CPU mesh, with --layers a multiple of P")
    globals()["PEAK_FLOPS"] = args.peak_gflops * 1e9
    million = parameter_count(config) / 1e6
    if args.simulate:
        mesh = parse_mesh(args.mesh or "16x16", device=args.simulate)
        print(
            f"GPT {million:.0f}M parameters, batch {config.batch_size} x {config.context}, "
            f"simulated on {args.simulate} mesh {dict(zip(mesh.axis_names, mesh.axis_sizes))}"
        )
        report = simulate(config, mesh)
        if not launched:  # the launcher prints its own, fuller report
            print(report)
        return report
    mesh = parse_mesh(args.mesh, pipeline=config.pipeline)
    layout = (
        "1 device"
        if mesh is None
        else " x ".join(f"{name}={size}" for name, size in zip(mesh.axis_names, mesh.axis_sizes))
    )
    print(
        f"GPT {million:.2f}M parameters, {config.layers} layers, batch {config.batch_size} x "
        f"{config.context} characters, mesh {layout}"
    )
    result = train(config, mesh)
    print(
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} in {result.seconds:.1f} s; "
        f"{result.tokens_per_second:.0f} tokens/s, MFU "
        f"{result.tokens_per_second * flops_per_token(config) / PEAK_FLOPS:.2%} of "
        f"{PEAK_FLOPS / 1e9:.0f} GFLOP/s"
    )
    return result


if __name__ == "__main__":
    main()
