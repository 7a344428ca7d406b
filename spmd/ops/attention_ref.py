"""The unfused numpy oracle of attention: grouped-head layouts, masks, forward and backward."""

from __future__ import annotations

import numpy as np

# Masked scores take this value, not -inf, as JAX does: a fully masked row averages v.
LARGE_NEGATIVE = -0.7 * float(np.finfo(np.float32).max)


def grouped(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """q as [*b,K,g,T,H] and k, v as [*b,K,1,S,H] (float32): heads grouped by kv head."""
    nb = q.ndim - 3
    t, n, h = q.shape[-3:]
    kh = k.shape[-2]
    lead = tuple(range(nb))
    qg = q.reshape(q.shape[:nb] + (t, kh, n // kh, h)).transpose(*lead, nb + 1, nb + 2, nb, nb + 3)
    kg = k.transpose(*lead, nb + 1, nb, nb + 2)[..., :, None, :, :]
    vg = v.transpose(*lead, nb + 1, nb, nb + 2)[..., :, None, :, :]
    compute = np.result_type(q.dtype, np.float32)  # float32, or float64 for float64 inputs
    return tuple(np.asarray(a, compute) for a in (qg, kg, vg))


def grouped_scores(x: np.ndarray, nb: int, kh: int) -> np.ndarray:
    """A [*b,N,T,S] (or broadcast) array as [*b,K,g,T,S] (a view where it can be)."""
    n = x.shape[nb]
    if n == 1:
        return x[..., :, None, :, :]
    return x.reshape(x.shape[:nb] + (kh, n // kh) + x.shape[nb + 1 :])


def ungroup(x: np.ndarray, nb: int) -> np.ndarray:
    """[*b,K,g,T,H] -> [*b,T,N,H]."""
    lead = tuple(range(nb))
    y = x.transpose(*lead, nb + 2, nb, nb + 1, nb + 3)
    return y.reshape(y.shape[: nb + 1] + (-1, y.shape[-1]))


def keep_mask(
    t: int,
    s: int,
    is_causal: bool,
    mask: np.ndarray | None,
    nb: int,
    kh: int,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray | None:
    """Which scores survive (True) for rows x cols of the [T, S] grid, grouped; None: all."""
    keep = None
    if is_causal:
        r = np.arange(t)[rows][:, None]
        c = np.arange(s)[cols][None, :]
        keep = c <= r
    if mask is not None:
        m = grouped_scores(mask, nb, kh)[..., rows, cols]
        keep = m if keep is None else np.logical_and(m, keep)
    return keep


def split_extra(
    extra: tuple[np.ndarray, ...], has_bias: bool, has_mask: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    it = iter(extra)
    bias = next(it) if has_bias else None
    mask = next(it) if has_mask else None
    return bias, mask


def _probabilities(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    extra: tuple[np.ndarray, ...],
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[np.ndarray, ...]:
    """The unfused oracle's pieces: grouped q, k, v, the S x S probabilities, lse, keep."""
    nb = q.ndim - 3
    kh = k.shape[-2]
    bias, mask = split_extra(extra, has_bias, has_mask)
    qg, kg, vg = grouped(q, k, v)
    logits = np.matmul(qg, np.swapaxes(kg, -1, -2)) * np.float32(scale)
    if bias is not None:
        logits = logits + grouped_scores(np.asarray(bias, logits.dtype), nb, kh)
    keep = keep_mask(q.shape[-3], k.shape[-3], is_causal, mask, nb, kh)
    if keep is not None:
        logits = np.where(keep, logits, np.float32(LARGE_NEGATIVE))
    peak = logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits - peak)
    total = weights.sum(axis=-1, keepdims=True)
    lse = (np.log(total) + peak)[..., 0]
    return qg, kg, vg, weights / total, lse, keep


def fwd_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *extra: np.ndarray,
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[np.ndarray, np.ndarray]:
    nb = q.ndim - 3
    with np.errstate(all="ignore"):
        _, _, vg, probs, lse, _ = _probabilities(
            q, k, v, extra, scale, is_causal, has_bias, has_mask
        )
        out = ungroup(np.matmul(probs, vg), nb)
    lse = lse.reshape(lse.shape[:nb] + (-1, lse.shape[-1]))
    return out.astype(q.dtype), lse.astype(np.float32)


def bwd_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    lse: np.ndarray,
    d_out: np.ndarray,
    *extra: np.ndarray,
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[np.ndarray, ...]:
    """The softmax backward on the whole S x S matrix (recomputed here from q and k)."""
    nb = q.ndim - 3
    with np.errstate(all="ignore"):
        qg, kg, vg, probs, _, keep = _probabilities(
            q, k, v, extra, scale, is_causal, has_bias, has_mask
        )
        dog = grouped(d_out, k, v)[0]
        og = grouped(out, k, v)[0]
        d_v = np.matmul(np.swapaxes(probs, -1, -2), dog)  # [*b,K,g,S,Hv]
        d_p = np.matmul(dog, np.swapaxes(vg, -1, -2))
        d_s = probs * (d_p - (dog * og).sum(-1, keepdims=True))
        if keep is not None:
            d_s = np.where(keep, d_s, np.float32(0))
        d_q = ungroup(np.matmul(d_s, kg) * np.float32(scale), nb)
        d_k = np.matmul(np.swapaxes(d_s, -1, -2), qg).sum(axis=-3) * np.float32(scale)
    lead = tuple(range(nb))
    results = [
        d_q.astype(q.dtype),
        d_k.transpose(*lead, nb + 1, nb, nb + 2).astype(k.dtype),
        d_v.sum(axis=-3).transpose(*lead, nb + 1, nb, nb + 2).astype(v.dtype),
    ]
    if has_bias:
        results.append(reduce_to(ungroup_scores(d_s, nb), extra[0].shape))
    return tuple(results)


def ungroup_scores(x: np.ndarray, nb: int) -> np.ndarray:
    """[*b,K,g,T,S] -> [*b,N,T,S]."""
    return x.reshape(x.shape[:nb] + (-1,) + x.shape[-2:])


def reduce_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum x over the dims where `shape` has 1 (the bias's broadcast dims), in float32."""
    axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1)
    return np.asarray(x.sum(axis=axes, keepdims=True) if axes else x, np.float32)
