"""spmd.scipy.special: logsumexp and friends, numerically stable, composed of spmd.numpy."""

from __future__ import annotations

from typing import Any

from spmd import lax
from spmd.numpy import core, reductions, ufuncs


def logsumexp(
    a: Any, axis: Any = None, b: Any = None, keepdims: bool = False, return_sign: bool = False
) -> Any:
    """log(sum(b * exp(a))) over `axis`, shifted by the max so large inputs do not overflow;
    with return_sign, (log|sum|, sign(sum)) as scipy's."""
    x = core.float_type(core.asarray(a))
    if b is not None:
        x, w = core.promote_args("logsumexp", x, b)
        x, w = core.broadcast_values("logsumexp", x, w)
    top = lax.stop_gradient(reductions.max(x, axis=axis, keepdims=True))
    # an all -inf slice has max -inf; shifting by 0 there keeps exp(-inf) = 0, not nan
    top = ufuncs.where(ufuncs.isfinite(top), top, 0)
    e = ufuncs.exp(ufuncs.subtract(x, top))
    if b is not None:
        e = ufuncs.multiply(e, w)
    total = reductions.sum(e, axis=axis, keepdims=True)
    sign = ufuncs.sign(total)
    out = ufuncs.add(ufuncs.log(ufuncs.abs(total)), top)
    if not keepdims:
        out = _drop(out, x, axis)
        sign = _drop(sign, x, axis)
    if return_sign:
        return out, sign
    if b is not None:
        out = ufuncs.where(lax.lt(sign, 0), float("nan"), out)
    return out


def logit(x: Any) -> Any:
    """log(x / (1 - x))."""
    x = core.float_type(core.asarray(x))
    return ufuncs.log(ufuncs.divide(x, ufuncs.subtract(1, x)))


def expit(x: Any) -> Any:
    """The logistic sigmoid 1 / (1 + exp(-x))."""
    return lax.logistic(core.float_type(core.asarray(x)))


def _drop(out: Any, x: Any, axis: Any) -> Any:
    from spmd.numpy.manipulation import squeeze

    axes = reductions._axes(x, axis)
    return squeeze(out, axis=axes) if axes else out
