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

import spmd
import spmd.numpy as snp
import spmd.optim
import spmd.random
from spmd import NamedSharding, P
from spmd.data import DataLoader

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "python_reference.txt")
PEAK_FLOPS = 2 * 32e9  # nominal: 2 cores x ~32 GFLOP/s float32


@dataclasses.dataclass(frozen=True)
class Config:
    """Model and optimiser settings (the defaults train in about a minute on 2 cores)."""

    vocab: int = 128
    context: int = 32
    width: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    steps: int = 60
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 6
    weight_decay: float = 0.01
    seed: int = 0
    pipeline: int = 1  # stages over the 'pipe' mesh axis (1: no pipeline)
    microbatches: int = 4  # per step, when pipelined

    @property
    def head_width(self) -> int:
        return self.width // self.heads


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


def sharding(mesh: spmd.Mesh | None, *axes: str | None) -> NamedSharding | None:
    """NamedSharding over the axes this mesh has (the others replicate)."""
    if mesh is None:
        return None
    return NamedSharding(mesh, P(*[a if a in mesh.axis_names else None for a in axes]))


def param_shardings(mesh: spmd.Mesh | None) -> dict[str, Any]:
    """Megatron: q/k/v and the MLP's first layer split their outputs over 'model' (heads,
    hidden units); the attention output and the MLP's second layer split their inputs.
    Pipelined, the layers are [stage, layer of the stage, ...] with the stage dim on 'pipe'."""
    s = ("pipe",) if mesh is not None and "pipe" in mesh.axis_names else ()
    layer = {
        "ln1_scale": sharding(mesh, *s),
        "ln1_bias": sharding(mesh, *s),
        "qkv": sharding(mesh, *s, None, None, None, "model", None),  # [layer, in, qkv, head, e]
        "out": sharding(mesh, *s, None, "model", None, None),  # [layer, head, e, out]
        "ln2_scale": sharding(mesh, *s),
        "ln2_bias": sharding(mesh, *s),
        "mlp_in": sharding(mesh, *s, None, None, "model"),  # [layer, width, hidden]
        "mlp_in_bias": sharding(mesh, *s, None, "model"),
        "mlp_out": sharding(mesh, *s, None, "model", None),  # [layer, hidden, width]
        "mlp_out_bias": sharding(mesh, *s),
    }
    return {
        "embed": sharding(mesh),
        "position": sharding(mesh),
        "layers": layer,
        "final_scale": sharding(mesh),
        "final_bias": sharding(mesh),
        "unembed": sharding(mesh, None, "model"),
    }


# -- model -----------------------------------------------------------------------------------


def init_params(config: Config, mesh: spmd.Mesh | None) -> dict[str, Any]:
    """GPT-2 style initialisation from spmd.random: the same values on every mesh."""
    c = config
    names = ("embed", "position", "qkv", "out", "mlp_in", "mlp_out", "unembed")
    keys = dict(zip(names, spmd.random.split(spmd.random.key(c.seed), len(names))))
    hidden = c.mlp_ratio * c.width
    residual_scale = 0.02 / math.sqrt(2 * c.layers)

    def normal(name: str, shape: tuple[int, ...], scale: float = 0.02) -> np.ndarray:
        return np.asarray(spmd.random.normal(keys[name], shape, np.float32)) * np.float32(scale)

    def full(shape: tuple[int, ...], value: float) -> np.ndarray:
        return np.full(shape, value, np.float32)

    layers = {
        "ln1_scale": full((c.layers, c.width), 1.0),
        "ln1_bias": full((c.layers, c.width), 0.0),
        "qkv": normal("qkv", (c.layers, c.width, 3, c.heads, c.head_width)),
        "out": normal("out", (c.layers, c.heads, c.head_width, c.width), residual_scale),
        "ln2_scale": full((c.layers, c.width), 1.0),
        "ln2_bias": full((c.layers, c.width), 0.0),
        "mlp_in": normal("mlp_in", (c.layers, c.width, hidden)),
        "mlp_in_bias": full((c.layers, hidden), 0.0),
        "mlp_out": normal("mlp_out", (c.layers, hidden, c.width), residual_scale),
        "mlp_out_bias": full((c.layers, c.width), 0.0),
    }
    params = {
        "embed": normal("embed", (c.vocab, c.width)),
        "position": normal("position", (c.context, c.width), 0.01),
        "layers": layers,
        "final_scale": full((c.width,), 1.0),
        "final_bias": full((c.width,), 0.0),
        "unembed": normal("unembed", (c.width, c.vocab)),
    }
    if c.pipeline > 1:  # the same values, stage-major: [stage, layer of the stage, ...]
        params["layers"] = spmd.tree_map(
            lambda w: w.reshape((c.pipeline, c.layers // c.pipeline) + w.shape[1:]), layers
        )
    return spmd.tree_map(spmd.device_put, params, param_shardings(mesh))


def unstaged(params: dict[str, Any]) -> dict[str, Any]:
    """Pipelined parameters as numpy in the unpipelined layout ([layer, ...])."""
    flat = {k: np.asarray(v) for k, v in params.items() if k != "layers"}
    flat["layers"] = {k: np.asarray(v) for k, v in params["layers"].items()}
    if flat["layers"]["ln1_scale"].ndim == 3:
        flat["layers"] = {k: v.reshape((-1,) + v.shape[2:]) for k, v in flat["layers"].items()}
    return flat


def block(x: Any, layer: dict[str, Any], reduce: Any = lambda y: y) -> Any:
    """One pre-norm transformer block on x [batch, time, width]; `reduce` sums the partial
    products of the heads and hidden units (psum over 'model' inside the pipeline)."""
    h = spmd.nn.layer_norm(x, layer["ln1_scale"], layer["ln1_bias"])
    qkv = snp.einsum("btd,dkhe->kbthe", h, layer["qkv"])
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = snp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(q.shape[-1])
    time_steps = x.shape[1]
    causal = snp.arange(time_steps)[:, None] >= snp.arange(time_steps)[None, :]
    scores = snp.where(causal, scores, -1e9)
    attention = snp.einsum("bhts,bshe->bthe", spmd.nn.softmax(scores, axis=-1), v)
    x = x + reduce(snp.einsum("bthe,hed->btd", attention, layer["out"]))
    h = spmd.nn.layer_norm(x, layer["ln2_scale"], layer["ln2_bias"])
    h = spmd.nn.gelu(h @ layer["mlp_in"] + layer["mlp_in_bias"])
    return x + reduce(h @ layer["mlp_out"]) + layer["mlp_out_bias"]


def layers_in_sequence(x: Any, layers: dict[str, Any], reduce: Any = lambda y: y) -> Any:
    def step(carry: Any, layer: dict[str, Any]) -> tuple[Any, None]:
        return block(carry, layer, reduce), None

    return spmd.lax.scan(step, x, layers)[0]


def forward(
    params: dict[str, Any], tokens: Any, mesh: spmd.Mesh | None = None, microbatches: int = 1
) -> Any:
    """Logits [batch, time, vocab] of the next character; the layers run under lax.scan,
    or, on a mesh with a 'pipe' axis, as pipeline stages (embedding and head outside)."""
    vocab = params["embed"].shape[0]
    x = spmd.nn.one_hot(tokens, vocab) @ params["embed"] + params["position"]
    if mesh is not None and "pipe" in mesh.axis_names:

        def stage(layers: dict[str, Any], h: Any) -> Any:  # one device's blocks (shard_map)
            return layers_in_sequence(h, layers, lambda y: spmd.lax.psum(y, "model"))

        specs = spmd.tree_map(lambda s: s.spec, param_shardings(mesh)["layers"])
        x = spmd.pipeline(
            stage,
            params["layers"],
            x,
            num_microbatches=microbatches,
            mesh=mesh,
            param_specs=specs,
            input_spec=P("data"),
        )
    else:
        x = layers_in_sequence(x, params["layers"])
    x = spmd.nn.layer_norm(x, params["final_scale"], params["final_bias"])
    return x @ params["unembed"]


def loss_fn(
    params: dict[str, Any], batch: Any, mesh: spmd.Mesh | None = None, microbatches: int = 1
) -> Any:
    """Mean cross-entropy of each next character."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = forward(params, inputs, mesh, microbatches)
    log_probs = spmd.nn.log_softmax(logits, axis=-1)
    return -snp.mean(snp.sum(log_probs * spmd.nn.one_hot(targets, logits.shape[-1]), axis=-1))


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


def parameter_count(config: Config) -> int:
    c = config
    per_layer = (
        4 * c.width
        + 3 * c.width * c.width
        + c.width * c.width
        + 2 * c.width * c.mlp_ratio * c.width
        + c.mlp_ratio * c.width
        + c.width
    )
    return c.layers * per_layer + 2 * c.vocab * c.width + c.context * c.width + 2 * c.width


def flops_per_token(config: Config) -> float:
    """Training FLOPs per token: 6 x parameters + 12 x layers x context x width (attention)."""
    return 6 * parameter_count(config) + 12 * config.layers * config.context * config.width


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
    params = spmd.sim.abstract_args([_param_shapes(config)], [param_shardings(mesh)])[0]
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


def _param_shapes(config: Config) -> Any:
    """The parameter pytree as ShapeDtypeStructs, without allocating it."""
    c = config
    hidden = c.mlp_ratio * c.width

    def f32(*shape: int) -> Any:
        return spmd.ShapeDtypeStruct(shape, "float32")

    layer = {
        "ln1_scale": f32(c.layers, c.width),
        "ln1_bias": f32(c.layers, c.width),
        "qkv": f32(c.layers, c.width, 3, c.heads, c.head_width),
        "out": f32(c.layers, c.heads, c.head_width, c.width),
        "ln2_scale": f32(c.layers, c.width),
        "ln2_bias": f32(c.layers, c.width),
        "mlp_in": f32(c.layers, c.width, hidden),
        "mlp_in_bias": f32(c.layers, hidden),
        "mlp_out": f32(c.layers, hidden, c.width),
        "mlp_out_bias": f32(c.layers, c.width),
    }
    return {
        "embed": f32(c.vocab, c.width),
        "position": f32(c.context, c.width),
        "layers": layer,
        "final_scale": f32(c.width),
        "final_bias": f32(c.width),
        "unembed": f32(c.width, c.vocab),
    }


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
