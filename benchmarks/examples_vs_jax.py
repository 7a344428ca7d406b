"""Steps/s of the examples' training steps (examples/train.py's MLP, examples/transformer.py's
GPT; their default sizes and shardings on a 2x4 mesh): ours vs the same model in JAX on 8 host
CPU devices, same run, interleaved medians.

Run: python benchmarks/examples_vs_jax.py [--repeat 7] [--number 3]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models as M  # sets XLA_FLAGS (8 host devices) before jax is imported
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import train as mlp_example
import transformer as gpt_example

import spmd

Runner = Callable[[], float]


def jax_shardings(ours: Any, jax_mesh: Any) -> Any:
    """The examples' NamedShardings (a pytree) as JAX NamedShardings on the same axes."""
    from jax.sharding import NamedSharding, PartitionSpec

    return spmd.tree_map(lambda s: NamedSharding(jax_mesh, PartitionSpec(*tuple(s.spec))), ours)


def jax_adamw(
    jnp: Any,
    peak: float,
    warmup: int,
    total: int,
    b1: float,
    b2: float,
    weight_decay: float,
    clip_norm: float = 1.0,
    eps: float = 1e-8,
) -> Any:
    """spmd.optim.adamw(warmup_cosine(...), clip_norm=1) written with jax.numpy."""
    import jax

    def schedule(step: Any) -> Any:
        t = step.astype(jnp.float32)
        progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(t < warmup, peak * t / max(warmup, 1), cosine)

    def update(grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict[str, Any]]:
        leaves = jax.tree_util.tree_leaves(grads)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
        scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))
        grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
        step = state["step"] + 1
        lr = schedule(state["step"])
        t = step.astype(jnp.float32)
        c1, c2 = 1.0 - jnp.power(b1, t), 1.0 - jnp.power(b2, t)
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["mu"], grads)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["nu"], grads)

        def one(p: Any, m: Any, v: Any) -> Any:
            return p - lr * ((m / c1) / (jnp.sqrt(v / c2) + eps) + weight_decay * p)

        return jax.tree_util.tree_map(one, params, mu, nu), {"step": step, "mu": mu, "nu": nu}

    return update


def jax_state(params: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {
        "step": jnp.asarray(0, jnp.int32),
        "mu": zeros,
        "nu": jax.tree_util.tree_map(jnp.zeros_like, params),
    }


def jax_layer_norm(jnp: Any, x: Any, scale: Any, bias: Any) -> Any:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


# -- the MLP of examples/train.py ------------------------------------------------------------


def mlp_runners(ours_mesh: Any, jax_mesh: Any) -> tuple[Runner, Runner]:
    """(ours, jax): one step each (then float(loss), as the example's loop reads it)."""
    import jax
    import jax.numpy as jnp

    config = mlp_example.Config()
    optimizer = mlp_example.make_optimizer(config)
    params = mlp_example.init_params(config, ours_mesh)
    state = optimizer.init(params)
    step_fn = mlp_example.make_train_step(config, optimizer, ours_mesh, params, state)
    x_train, y_train, _, _ = mlp_example.load_digits()
    rows = np.random.default_rng(0).permutation(len(x_train))[: 4 * config.batch_size]
    batches = [(x_train[rows[i::4]], y_train[rows[i::4]]) for i in range(4)]
    by_data = mlp_example.sharding(ours_mesh, "data", None)
    ours_batches = [
        (spmd.device_put(x, by_data), spmd.device_put(y, mlp_example.sharding(ours_mesh, "data")))
        for x, y in batches
    ]
    shardings = jax_shardings(mlp_example.param_shardings(ours_mesh), jax_mesh)
    replicated = jax.sharding.NamedSharding(jax_mesh, jax.sharding.PartitionSpec())
    jax_params = jax.device_put({k: np.asarray(v) for k, v in params.items()}, shardings)
    jax_opt = jax_state(jax_params)
    batch_x = jax.sharding.NamedSharding(jax_mesh, jax.sharding.PartitionSpec("data", None))
    batch_y = jax.sharding.NamedSharding(jax_mesh, jax.sharding.PartitionSpec("data"))
    jax_batches = [(jax.device_put(x, batch_x), jax.device_put(y, batch_y)) for x, y in batches]
    update = jax_adamw(
        jnp,
        config.learning_rate,
        config.warmup_steps,
        config.steps,
        0.9,
        0.999,
        config.weight_decay,
    )
    base_key = jax.random.key(config.seed + 1)

    def loss_fn(p: Any, x: Any, y: Any, key: Any) -> tuple[Any, Any]:
        hidden = jax.nn.relu(x @ p["w1"] + p["b1"])
        keep = jax.random.bernoulli(key, 1.0 - config.dropout, hidden.shape)
        hidden = jnp.where(keep, hidden / (1.0 - config.dropout), 0.0)
        logits = hidden @ p["w2"] + p["b2"]
        log_probs = jax.nn.log_softmax(logits)
        loss = -jnp.mean(jnp.sum(log_probs * jax.nn.one_hot(y, logits.shape[-1]), axis=-1))
        return loss, jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))

    def jax_step(p: Any, s: Any, x: Any, y: Any, step: Any) -> Any:
        key = jax.random.fold_in(base_key, step)
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y, key)
        p, s = update(grads, s, p)
        return p, s, loss, accuracy

    state_shardings = {"step": replicated, "mu": shardings, "nu": shardings}
    jitted = jax.jit(jax_step, out_shardings=(shardings, state_shardings, replicated, replicated))
    box = {"ours": (params, state), "jax": (jax_params, jax_opt), "i": 0}

    def run_ours() -> float:
        i = box["i"] = box["i"] + 1
        x, y = ours_batches[i % 4]
        p, s, loss, accuracy = step_fn(*box["ours"], x, y, np.int32(i))
        box["ours"] = (p, s)
        return float(loss) + 0 * float(accuracy)

    def run_jax() -> float:
        i = box["i"]
        x, y = jax_batches[i % 4]
        p, s, loss, accuracy = jitted(*box["jax"], x, y, np.int32(i))
        box["jax"] = (p, s)
        return float(loss) + 0 * float(accuracy)

    return run_ours, run_jax


# -- the GPT of examples/transformer.py ------------------------------------------------------


def gpt_forward(jax: Any, jnp: Any, params: dict[str, Any], tokens: Any) -> Any:
    """examples/transformer.py forward() in jax.numpy (scan over the stacked layers)."""
    vocab = params["embed"].shape[0]
    x = jax.nn.one_hot(tokens, vocab) @ params["embed"] + params["position"]

    def block(x: Any, layer: dict[str, Any]) -> tuple[Any, None]:
        h = jax_layer_norm(jnp, x, layer["ln1_scale"], layer["ln1_bias"])
        qkv = jnp.einsum("btd,dkhe->kbthe", h, layer["qkv"])
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(q.shape[-1])
        steps = x.shape[1]
        causal = jnp.arange(steps)[:, None] >= jnp.arange(steps)[None, :]
        scores = jnp.where(causal, scores, -1e9)
        attention = jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(scores, axis=-1), v)
        x = x + jnp.einsum("bthe,hed->btd", attention, layer["out"])
        h = jax_layer_norm(jnp, x, layer["ln2_scale"], layer["ln2_bias"])
        h = jax.nn.gelu(h @ layer["mlp_in"] + layer["mlp_in_bias"], approximate=True)
        return x + h @ layer["mlp_out"] + layer["mlp_out_bias"], None

    x, _ = jax.lax.scan(block, x, params["layers"])
    x = jax_layer_norm(jnp, x, params["final_scale"], params["final_bias"])
    return x @ params["unembed"]


def gpt_runners(ours_mesh: Any, jax_mesh: Any) -> tuple[Runner, Runner]:
    import jax
    import jax.numpy as jnp

    config = gpt_example.Config()
    optimizer = gpt_example.make_optimizer(config)
    params = gpt_example.init_params(config, ours_mesh)
    state = optimizer.init(params)
    step_fn = gpt_example.make_train_step(optimizer, ours_mesh, params, state)
    windows = gpt_example.load_corpus(config)
    rows = np.random.default_rng(0).permutation(len(windows))[: 4 * config.batch_size]
    batches = [windows[rows[i::4]] for i in range(4)]
    ours_batches = [
        spmd.device_put(b, gpt_example.sharding(ours_mesh, "data", None)) for b in batches
    ]
    shardings = jax_shardings(gpt_example.param_shardings(ours_mesh), jax_mesh)
    replicated = jax.sharding.NamedSharding(jax_mesh, jax.sharding.PartitionSpec())
    jax_params = jax.device_put(spmd.tree_map(np.asarray, params), shardings)
    jax_opt = jax_state(jax_params)
    by_data = jax.sharding.NamedSharding(jax_mesh, jax.sharding.PartitionSpec("data", None))
    jax_batches = [jax.device_put(b, by_data) for b in batches]
    update = jax_adamw(
        jnp, config.learning_rate, config.warmup_steps, config.steps, 0.9, 0.95, config.weight_decay
    )

    def loss_fn(p: Any, batch: Any) -> Any:
        logits = gpt_forward(jax, jnp, p, batch[:, :-1])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        targets = jax.nn.one_hot(batch[:, 1:], logits.shape[-1])
        return -jnp.mean(jnp.sum(log_probs * targets, axis=-1))

    def jax_step(p: Any, s: Any, batch: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        p, s = update(grads, s, p)
        return p, s, loss

    state_shardings = {"step": replicated, "mu": shardings, "nu": shardings}
    jitted = jax.jit(jax_step, out_shardings=(shardings, state_shardings, replicated))
    box = {"ours": (params, state), "jax": (jax_params, jax_opt), "i": 0}

    def run_ours() -> float:
        box["i"] += 1
        p, s, loss = step_fn(*box["ours"], ours_batches[box["i"] % 4])
        box["ours"] = (p, s)
        return float(loss)

    def run_jax() -> float:
        p, s, loss = jitted(*box["jax"], jax_batches[box["i"] % 4])
        box["jax"] = (p, s)
        return float(loss)

    return run_ours, run_jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="interleaved samples per side")
    parser.add_argument("--number", type=int, default=3, help="steps per sample")
    parser.add_argument(
        "--warmup",
        type=int,
        default=15,
        help="untimed steps: compiles, and each dot's variant trials (<= 12 calls)",
    )
    args = parser.parse_args()
    import jax

    print(M.header("examples vs JAX: one training step (value_and_grad + AdamW), 2x4 mesh"))
    ours_mesh = spmd.make_mesh((2, 4), ("data", "model"))
    jax_mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    cases = {
        "MLP 64-256-10, batch 128 (train.py)": mlp_runners,
        "GPT 2x64 ctx 32, batch 16 (transformer.py)": gpt_runners,
    }
    print(
        "| example | first loss ours / JAX | ours ms/step | JAX ms/step | ours steps/s | "
        "JAX steps/s | ours/JAX steps/s |\n|---|---|---|---|---|---|---|"
    )
    for name, make in cases.items():
        run_ours, run_jax = make(ours_mesh, jax_mesh)
        first = (run_ours(), run_jax())
        for _ in range(args.warmup):
            run_ours()
            run_jax()
        times = M.interleaved({"ours": run_ours, "jax": run_jax}, args.repeat, args.number)
        ours_ms, jax_ms = times["ours"] * 1e3, times["jax"] * 1e3
        print(
            f"| {name} | {first[0]:.4f} / {first[1]:.4f} | {ours_ms:.2f} | {jax_ms:.2f} | "
            f"{1e3 / ours_ms:.1f} | {1e3 / jax_ms:.1f} | {jax_ms / ours_ms:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
