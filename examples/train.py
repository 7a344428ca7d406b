"""Train an MLP on scikit-learn's handwritten digits: data parallel over 'data', tensor parallel
over 'model' (hidden layer column-parallel, output layer row-parallel), AdamW + warmup-cosine.

The step donates the parameters and optimiser state (their buffers may hold the next ones).

Run: python3 examples/train.py [--steps 400] [--mesh 2x4] [--checkpoint-dir ckpt --resume]
     [--stop-after N]  (stop early, e.g. to resume later from the checkpoint)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import spmd
import spmd.numpy as snp
import spmd.optim
import spmd.random
from spmd import NamedSharding, P
from spmd.data import DataLoader


@dataclasses.dataclass(frozen=True)
class Config:
    """Model and optimiser settings (the defaults reach >= 97% test accuracy)."""

    hidden: int = 256
    dropout: float = 0.1
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 1e-4
    seed: int = 0


# -- data and mesh ---------------------------------------------------------------------------


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 8x8 images scaled to [0, 1], a fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    test = order[:360]
    train = order[360:]
    return x[train], y[train], x[test], y[test]


def parse_mesh(text: str | None) -> spmd.Mesh | None:
    """'2x4' -> Mesh (data=2, model=4); '8' -> Mesh (data=8); '1' -> None (one device)."""
    if text is None and spmd.config.env("SPMD_MESH") and distributed() is not None:
        return distributed().launch_mesh()  # the mesh given to spmd-launch --mesh
    if text is None:
        text = "2x4" if spmd.device_count() >= 8 else str(spmd.device_count())
    shape = tuple(int(n) for n in text.lower().split("x"))
    if math.prod(shape) == 1:
        return None
    return spmd.make_mesh(shape, ("data", "model")[: len(shape)])


def sharding(mesh: spmd.Mesh | None, *axes: str | None) -> NamedSharding | None:
    """NamedSharding over the axes this mesh has (the others replicate)."""
    if mesh is None:
        return None
    return NamedSharding(mesh, P(*[a if a in mesh.axis_names else None for a in axes]))


def param_shardings(mesh: spmd.Mesh | None) -> dict[str, Any]:
    """Megatron MLP: w1 column-parallel (hidden over 'model'), w2 row-parallel."""
    return {
        "w1": sharding(mesh, None, "model"),
        "b1": sharding(mesh, "model"),
        "w2": sharding(mesh, "model", None),
        "b2": sharding(mesh),
    }


# -- model -----------------------------------------------------------------------------------


def init_params(
    config: Config, mesh: spmd.Mesh | None, features: int = 64, classes: int = 10
) -> dict[str, Any]:
    """He-initialised weights from spmd.random: the same values on every mesh."""
    k1, k2 = spmd.random.split(spmd.random.key(config.seed))
    params = {
        "w1": spmd.random.normal(k1, (features, config.hidden), np.float32)
        * math.sqrt(2.0 / features),
        "b1": np.zeros(config.hidden, np.float32),
        "w2": spmd.random.normal(k2, (config.hidden, classes), np.float32)
        * math.sqrt(1.0 / config.hidden),
        "b2": np.zeros(classes, np.float32),
    }
    shardings = param_shardings(mesh)
    return {
        name: spmd.device_put(np.asarray(value, np.float32), shardings[name])
        for name, value in params.items()
    }


def forward(params: dict[str, Any], x: Any, key: Any = None, dropout: float = 0.0) -> Any:
    """Logits; dropout on the hidden layer when a key is given."""
    hidden = spmd.nn.relu(x @ params["w1"] + params["b1"])
    if key is not None and dropout > 0:
        keep = spmd.random.bernoulli(key, 1.0 - dropout, hidden.shape)
        hidden = snp.where(keep, hidden / (1.0 - dropout), 0.0)
    return hidden @ params["w2"] + params["b2"]


def loss_and_accuracy(
    params: dict[str, Any], x: Any, y: Any, key: Any, dropout: float
) -> tuple[Any, Any]:
    logits = forward(params, x, key, dropout)
    log_probs = spmd.nn.log_softmax(logits)
    loss = -snp.mean(snp.sum(log_probs * spmd.nn.one_hot(y, logits.shape[-1]), axis=-1))
    accuracy = snp.mean((snp.argmax(logits, axis=-1) == y).astype(np.float32))
    return loss, accuracy


def make_optimizer(config: Config) -> Any:
    schedule = spmd.optim.warmup_cosine(config.learning_rate, config.warmup_steps, config.steps)
    return spmd.optim.adamw(
        schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=config.weight_decay, clip_norm=1.0
    )


def make_train_step(
    config: Config, optimizer: Any, mesh: spmd.Mesh | None, params: Any, opt_state: Any
) -> Any:
    """The jitted step (params, opt_state, x, y, step) -> (params, opt_state, loss, accuracy).

    The dropout key is fold_in(key(seed + 1), step): a function of the step alone, so the
    same masks are drawn on every mesh and after a resume.
    """
    base_key = spmd.random.key(config.seed + 1)

    def step(params: Any, opt_state: Any, x: Any, y: Any, step_index: Any) -> Any:
        key = spmd.random.fold_in(base_key, step_index)
        grad_fn = spmd.value_and_grad(loss_and_accuracy, has_aux=True)
        (loss, accuracy), grads = grad_fn(params, x, y, key, config.dropout)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, loss, accuracy

    if mesh is None:
        return spmd.jit(step, donate_argnums=(0, 1))
    replicated = NamedSharding(mesh, P())
    out = (
        _shardings_of(params, replicated),
        _shardings_of(opt_state, replicated),
        replicated,
        replicated,
    )
    return spmd.jit(step, out_shardings=out, donate_argnums=(0, 1))


def _shardings_of(tree: Any, default: NamedSharding) -> Any:
    def of(leaf: Any) -> Any:
        found = getattr(leaf, "sharding", None)
        return found if isinstance(found, NamedSharding) else default

    return spmd.tree_map(of, tree)


@spmd.jit
def _accuracy(params: dict[str, Any], x: Any, y: Any) -> Any:
    return snp.mean((snp.argmax(forward(params, x), axis=-1) == y).astype(np.float32))


def evaluate(params: dict[str, Any], x: np.ndarray, y: np.ndarray, mesh: spmd.Mesh | None) -> float:
    """Accuracy on (x, y), the batch sharded over 'data'."""
    x = spmd.device_put(x, sharding(mesh, "data", None))
    y = spmd.device_put(y, sharding(mesh, "data"))
    return float(_accuracy(params, x, y))


# -- training loop ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    params: dict[str, Any]
    losses: list[float]
    test_accuracy: float
    seconds: float


def train(
    config: Config,
    mesh: spmd.Mesh | None,
    *,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> Result:
    """Train for config.steps (or until stop_after); checkpoint and resume if asked."""
    x_train, y_train, x_test, y_test = load_digits()
    loader = DataLoader(
        {"x": x_train, "y": y_train},
        config.batch_size,
        mesh=mesh,
        batch_axis="data" if mesh is not None else None,
        seed=config.seed,
    )
    optimizer = make_optimizer(config)
    params = init_params(config, mesh)
    opt_state = optimizer.init(params)
    start = 0
    if checkpoint_dir:
        import spmd.checkpoint
    if resume and checkpoint_dir and spmd.checkpoint.latest_step(checkpoint_dir) is not None:
        state = spmd.checkpoint.restore(
            checkpoint_dir, target=_checkpoint_tree(params, opt_state, loader)
        )
        params, opt_state = state["params"], state["opt_state"]
        loader.load_state_dict({k: int(np.asarray(v)) for k, v in state["loader"].items()})
        start = int(np.asarray(state["loader"]["train_step"]))
    step_fn = make_train_step(config, optimizer, mesh, params, opt_state)
    bar = ProgressBar(config.steps, config.batch_size, enabled=progress and _is_main())
    losses: list[float] = []
    batches = loader.forever()
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    began = time.perf_counter()
    for step in range(start, end):
        batch = next(batches)
        params, opt_state, loss, accuracy = step_fn(
            params, opt_state, batch["x"], batch["y"], np.int32(step)
        )
        losses.append(float(loss))
        bar.update(step + 1, losses[-1], float(accuracy))
        if checkpoint_dir and checkpoint_every and (step + 1) % checkpoint_every == 0:
            tree = _checkpoint_tree(params, opt_state, loader, train_step=step + 1)
            spmd.checkpoint.save(checkpoint_dir, tree, step=step + 1)
    seconds = time.perf_counter() - began
    bar.close()
    return Result(params, losses, evaluate(params, x_test, y_test, mesh), seconds)


def _checkpoint_tree(
    params: Any, opt_state: Any, loader: DataLoader, train_step: int = 0
) -> dict[str, Any]:
    state = loader.state_dict()
    counters = {"epoch": state["epoch"], "step": state["step"], "train_step": train_step}
    return {
        "params": params,
        "opt_state": opt_state,
        "loader": {k: np.asarray(v, np.int64) for k, v in counters.items()},
    }


def save_params(params: dict[str, Any], mesh: spmd.Mesh | None, path: str) -> None:
    """The parameters gathered onto every device (so every process holds them whole), written
    by the main process."""
    if mesh is not None:
        params = spmd.jit(lambda p: p, out_shardings=NamedSharding(mesh, P()))(params)
    values = {name: np.asarray(value) for name, value in params.items()}
    if _is_main():
        np.savez(path, **values)


def distributed() -> Any:
    """spmd.distributed when this build has the multi-process runtimes, else None."""
    try:
        return importlib.import_module("spmd.distributed")
    except ImportError:
        return None


def _is_main() -> bool:
    runtime = distributed()
    return runtime is None or runtime.process_index() == 0


class ProgressBar:
    """One line, redrawn with \\r: step, bar, loss, accuracy, samples/s."""

    def __init__(self, total: int, batch_size: int, enabled: bool = True, width: int = 24):
        self.total = total
        self.batch_size = batch_size
        self.enabled = enabled and total > 0
        self.width = width
        self.began = time.perf_counter()
        self.seen = 0
        self.last_draw = 0.0

    def update(self, step: int, loss: float, accuracy: float) -> None:
        self.seen += self.batch_size
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < 0.1 and step < self.total):
            return
        self.last_draw = now
        done = int(self.width * step / self.total)
        rate = self.seen / max(now - self.began, 1e-9)
        line = (
            f"\rstep {step:5d}/{self.total} [{'#' * done}{'.' * (self.width - done)}] "
            f"loss {loss:.4f}  acc {accuracy:6.1%}  {rate:8.0f} samples/s"
        )
        sys.stdout.write(line)
        sys.stdout.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stdout.write("\n")
            sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--mesh", default=None, help="DATAxMODEL, e.g. 2x4 (default: the launcher's mesh, else 2x4)"
    )
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this step (the schedule still spans --steps)",
    )
    parser.add_argument(
        "--save-params",
        default=None,
        metavar="NPZ",
        help="write the final parameters (gathered) to this .npz file",
    )
    args = parser.parse_args(argv)
    config = dataclasses.replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch_size,
        hidden=args.hidden,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    runtime = distributed()
    if runtime is not None and not runtime.is_initialized():
        runtime.initialize()  # under mpiexec or torchrun-style variables: that runtime
    mesh = parse_mesh(args.mesh)
    layout = (
        "1 device"
        if mesh is None
        else " x ".join(f"{name}={size}" for name, size in zip(mesh.axis_names, mesh.axis_sizes))
    )
    if _is_main():
        print(f"MLP 64-{config.hidden}-10 on digits, mesh {layout}, batch {config.batch_size}")
    result = train(
        config,
        mesh,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every if args.checkpoint_dir else 0,
        resume=args.resume,
        stop_after=args.stop_after,
    )
    if args.save_params:
        save_params(result.params, mesh, args.save_params)
    if _is_main():
        done = config.steps if args.stop_after is None else min(config.steps, args.stop_after)
        print(
            f"test accuracy {result.test_accuracy:.2%} after {done} steps "
            f"({result.seconds:.1f} s training, {len(result.losses)} steps run)"
        )
    return result


if __name__ == "__main__":
    main()
