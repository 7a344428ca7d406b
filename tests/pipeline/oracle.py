"""Numpy oracles for the pipeline tests: the stages applied in sequence on one device, with
hand-written backprop (no spmd code)."""

from __future__ import annotations

import numpy as np


def mlp_forward(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Stage s: h -> tanh(h @ w[s] + b[s]); every stage's input, then the output."""
    hs = [x]
    for s in range(w.shape[0]):
        hs.append(np.tanh(hs[-1] @ w[s] + b[s]))
    return hs


def mlp_grads(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d/d(w, b, x) of sum(output * target)."""
    hs = mlp_forward(w, b, x)
    g = target
    dw, db = np.zeros_like(w), np.zeros_like(b)
    for s in reversed(range(w.shape[0])):
        gz = g * (1 - hs[s + 1] ** 2)
        dw[s] = hs[s].T @ gz
        db[s] = gz.sum(0)
        g = gz @ w[s].T
    return dw, db, g


def megatron_forward(w1: np.ndarray, w2: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Stage s: h -> h + tanh(h @ w1[s]) @ w2[s] (a residual MLP block)."""
    h = x
    for s in range(w1.shape[0]):
        h = h + np.tanh(h @ w1[s]) @ w2[s]
    return h


def megatron_grads(
    w1: np.ndarray, w2: np.ndarray, x: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d/d(w1, w2, x) of sum(output * target)."""
    hs, us = [x], []
    for s in range(w1.shape[0]):
        us.append(np.tanh(hs[-1] @ w1[s]))
        hs.append(hs[-1] + us[-1] @ w2[s])
    g = target
    d1, d2 = np.zeros_like(w1), np.zeros_like(w2)
    for s in reversed(range(w1.shape[0])):
        d2[s] = us[s].T @ g
        ga = (g @ w2[s].T) * (1 - us[s] ** 2)
        d1[s] = hs[s].T @ ga
        g = g + ga @ w1[s].T
    return d1, d2, g
