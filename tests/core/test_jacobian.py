"""jacrev / jacfwd / hessian against central finite differences; eval_shape, device_get."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd.errors import ArgumentError

X = np.array([0.3, -0.7, 1.1])


def finite_jacobian(g, x, eps=1e-6):
    cols = []
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = eps
        cols.append((np.asarray(g(x + d)) - np.asarray(g(x - d))) / (2 * eps))
    return np.stack(cols, -1).reshape(np.shape(g(x)) + x.shape)


def f(v):
    return snp.tanh(v) * snp.sum(v**2)


# Finite differences with a 1e-6 step need float64 (see tests/core/test_grad.py).
@pytest.mark.usefixtures("x64_on")
@pytest.mark.parametrize("jac", [spmd.jacrev, spmd.jacfwd])
def test_jacobians_match_finite_differences(jac):
    np.testing.assert_allclose(np.asarray(jac(f)(X)), finite_jacobian(f, X), atol=1e-8)
    np.testing.assert_allclose(np.asarray(spmd.jit(jac(f))(X)), finite_jacobian(f, X), atol=1e-8)
    m = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(np.asarray(jac(lambda w, v: w @ v, argnums=1)(m, X)), m)
    grid = np.arange(6.0).reshape(2, 3) / 5
    got = np.asarray(jac(lambda v: snp.sin(v) * v)(grid))
    assert got.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(got, finite_jacobian(lambda v: np.sin(v) * v, grid), atol=1e-8)


@pytest.mark.usefixtures("x64_on")
def test_hessian_is_the_jacobian_of_the_gradient():
    s = lambda v: snp.sum(snp.sin(v) * v[::-1])
    hess = np.asarray(spmd.hessian(s)(X))
    np.testing.assert_allclose(hess, finite_jacobian(lambda v: spmd.grad(s)(v), X), atol=1e-7)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)


def test_eval_shape_device_get_and_bad_arguments():
    out = spmd.eval_shape(lambda v: (v * 2, v.sum()), np.ones((2, 3), np.float32))
    assert [o.shape for o in out] == [(2, 3), ()] and out[1].dtype == "float32"
    got = spmd.device_get({"a": snp.ones(2), "b": 3})
    assert isinstance(got["a"], np.ndarray) and got["b"] == 3
    assert spmd.local_device_count() == len(spmd.local_devices())
    with pytest.raises(ArgumentError):
        spmd.jacrev(lambda v: (v, v))(X)
    with pytest.raises(ArgumentError):
        spmd.jacfwd(f, argnums=2)
