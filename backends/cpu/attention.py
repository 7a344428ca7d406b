"""Fused attention on the CPU: a tiled online-softmax (flash attention) forward and backward
in blocked numpy (BLAS matmuls per tile). No S x S buffer: the largest temporary is one
[*batch, K, g, BLOCK_Q, BLOCK_K] tile of scores.

The forward keeps, per query row, the running max m, the running sum l of exp(s - m) and
the running output; a new key tile rescales them by exp(m_old - m_new). The backward
rebuilds each probability tile as exp(s - lse) from the forward's lse.

Imports only the core (the op's layout helpers) and numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from spmd.ir.graph import Op
from spmd.ops.attention import (
    LARGE_NEGATIVE,
    grouped,
    grouped_scores,
    keep_mask,
    reduce_to,
    ungroup,
    ungroup_scores,
)

BLOCK_Q = 128
BLOCK_K = 256


def _extras(op: Op, ins: Sequence[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    it = iter(ins)
    bias = next(it) if op.attrs["has_bias"] else None
    mask = next(it) if op.attrs["has_mask"] else None
    return bias, mask


def _tiles(t: int, s: int, op: Op) -> list[tuple[slice, list[slice]]]:
    """Query tiles, each with the key tiles it reads: a causal row never reads past itself,
    unless a mask may mask a whole row (JAX then averages v over all S keys)."""
    is_causal = op.attrs["is_causal"] and not op.attrs["has_mask"]
    out = []
    for r0 in range(0, t, BLOCK_Q):
        rows = slice(r0, min(t, r0 + BLOCK_Q))
        last = min(s, rows.stop) if is_causal else s
        out.append((rows, [slice(c0, min(s, c0 + BLOCK_K)) for c0 in range(0, last, BLOCK_K)]))
    return out


def _scores(
    qt: np.ndarray,
    kg: np.ndarray,
    cols: slice,
    rows: slice,
    scale: float,
    bias: np.ndarray | None,
    op: Op,
    mask: np.ndarray | None,
    nb: int,
    kh: int,
    t: int,
    s: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One scaled, biased, masked score tile and its keep mask."""
    tile = np.matmul(qt, np.swapaxes(kg[..., cols, :], -1, -2))
    tile *= np.float32(scale)
    if bias is not None:
        tile += grouped_scores(bias, nb, kh)[..., rows, cols]
    keep = keep_mask(t, s, op.attrs["is_causal"], mask, nb, kh, rows, cols)
    if keep is not None:
        tile = np.where(keep, tile, np.float32(LARGE_NEGATIVE))
    return tile, keep


def attention_forward(op: Op, ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(out, lse) of dot_product_attention, tile by tile."""
    q, k, v = ins[:3]
    bias, mask = _extras(op, ins[3:])
    if bias is not None:
        bias = np.asarray(bias, np.float32)
    nb, kh = q.ndim - 3, k.shape[-2]
    t, s = q.shape[-3], k.shape[-3]
    qg, kg, vg = grouped(q, k, v)
    acc = np.zeros(qg.shape[:-1] + (vg.shape[-1],), np.float32)
    peak = np.full(qg.shape[:-1] + (1,), -np.inf, np.float32)
    total = np.zeros(qg.shape[:-1] + (1,), np.float32)
    scale = op.attrs["scale"]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for rows, key_tiles in _tiles(t, s, op):
            qt = qg[..., rows, :]
            m, lsum, a = peak[..., rows, :], total[..., rows, :], acc[..., rows, :]
            for cols in key_tiles:
                tile, _ = _scores(qt, kg, cols, rows, scale, bias, op, mask, nb, kh, t, s)
                new_m = np.maximum(m, tile.max(axis=-1, keepdims=True))
                rescale = np.exp(m - new_m)
                weights = np.exp(tile - new_m)
                lsum *= rescale
                lsum += weights.sum(axis=-1, keepdims=True)
                a *= rescale
                a += np.matmul(weights, vg[..., cols, :])
                m[...] = new_m
    out = ungroup(acc / total, nb).astype(q.dtype)
    lse = (np.log(total) + peak)[..., 0]
    lse = lse.reshape(lse.shape[:nb] + (-1, lse.shape[-1]))
    return [np.ascontiguousarray(out), np.ascontiguousarray(lse, np.float32)]


def attention_backward(op: Op, ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(dq, dk, dv[, dbias]) from (q, k, v, out, lse, d_out[, bias][, mask]), tile by tile."""
    q, k, v, out, lse, d_out = ins[:6]
    bias, mask = _extras(op, ins[6:])
    if bias is not None:
        bias = np.asarray(bias, np.float32)
    nb, kh = q.ndim - 3, k.shape[-2]
    t, s = q.shape[-3], k.shape[-3]
    scale = op.attrs["scale"]
    qg, kg, vg = grouped(q, k, v)
    dog = grouped(d_out, k, v)[0]
    og = grouped(out, k, v)[0]
    lse_g = grouped_scores(np.asarray(lse, np.float32)[..., None], nb, kh)  # [*b,K,g,T,1]
    delta = (dog * og).sum(axis=-1, keepdims=True)
    d_q = np.zeros_like(qg)
    d_k = np.zeros(qg.shape[:-3] + (1,) + kg.shape[-2:], np.float32)
    d_v = np.zeros(qg.shape[:-3] + (1,) + vg.shape[-2:], np.float32)
    d_bias = None if bias is None else np.zeros(bias.shape, np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for rows, key_tiles in _tiles(t, s, op):
            qt, dot = qg[..., rows, :], dog[..., rows, :]
            for cols in key_tiles:
                tile, keep = _scores(qt, kg, cols, rows, scale, bias, op, mask, nb, kh, t, s)
                row_lse = lse_g[..., rows, :]
                probs = np.exp(tile - row_lse)
                # a fully masked row's lse lost its log(S) to float32 rounding: 1/S each
                probs = np.where(row_lse < LARGE_NEGATIVE / 2, np.float32(1 / s), probs)
                d_v[..., cols, :] += np.matmul(np.swapaxes(probs, -1, -2), dot).sum(
                    axis=-3, keepdims=True
                )
                d_p = np.matmul(dot, np.swapaxes(vg[..., cols, :], -1, -2))
                d_s = probs * (d_p - delta[..., rows, :])
                if keep is not None:
                    d_s = np.where(keep, d_s, np.float32(0))
                if d_bias is not None:
                    _add_bias_grad(d_bias, d_s, nb, rows, cols)
                d_q[..., rows, :] += np.matmul(d_s, kg[..., cols, :]) * np.float32(scale)
                d_k[..., cols, :] += np.matmul(np.swapaxes(d_s, -1, -2), qt).sum(
                    axis=-3, keepdims=True
                ) * np.float32(scale)
    lead = tuple(range(nb))
    back = (*lead, nb + 1, nb, nb + 2)
    results = [
        np.ascontiguousarray(ungroup(d_q, nb), q.dtype),
        np.ascontiguousarray(d_k[..., 0, :, :].transpose(back), k.dtype),
        np.ascontiguousarray(d_v[..., 0, :, :].transpose(back), v.dtype),
    ]
    if d_bias is not None:
        results.append(d_bias)
    return results


def _add_bias_grad(
    d_bias: np.ndarray,
    d_s: np.ndarray,
    nb: int,
    rows: slice,
    cols: slice,
) -> None:
    """Add one tile's score gradient into dbias, summed over the bias's broadcast dims
    (so a [T, S] buffer exists only when the bias itself is one)."""
    tile = ungroup_scores(d_s, nb)
    row_full, col_full = d_bias.shape[-2] != 1, d_bias.shape[-1] != 1
    shape = d_bias.shape[:-2] + (
        tile.shape[-2] if row_full else 1,
        tile.shape[-1] if col_full else 1,
    )
    d_bias[..., rows if row_full else slice(None), cols if col_full else slice(None)] += reduce_to(
        tile, shape
    )


KERNELS: dict[str, Callable[[Op, Sequence[np.ndarray]], list[np.ndarray]]] = {
    "dot_product_attention": attention_forward,
    "dot_product_attention_bwd": attention_backward,
}


def run_native(op: Op, ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run one op of KERNELS on its numpy inputs."""
    return KERNELS[op.name](op, ins)
