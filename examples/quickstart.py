"""Quickstart: a two-layer MLP, its gradient, and one SGD step, under spmd.jit.

Run: python examples/quickstart.py
"""

import numpy as np

import spmd
import spmd.numpy as snp


def loss(params, x, y):
    h = snp.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"]
    return snp.mean((pred - y) ** 2)


@spmd.jit
def sgd_step(params, x, y):
    value, grads = spmd.value_and_grad(loss)(params, x, y)
    new = spmd.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    return new, value


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    params = {
        "w1": (rng.normal(size=(16, 32)) / 4).astype(np.float32),
        "b1": np.zeros(32, np.float32),
        "w2": (rng.normal(size=(32, 1)) / 6).astype(np.float32),
    }
    first = None
    for step in range(200):
        params, value = sgd_step(params, x, y)
        first = float(value) if first is None else first
        if step % 50 == 0:
            print(f"step {step:3d}  loss {float(value):.4f}")
    print(f"loss {first:.4f} -> {float(value):.4f}; traced {sgd_step.trace_count} time(s)")
    print(sgd_step.lower(params, x, y).as_text().splitlines()[0])


if __name__ == "__main__":
    main()
