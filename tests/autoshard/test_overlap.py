"""The overlap term (spmd/autoshard_overlap.py) solved on hand-built programs: an argument's
gather is taken back up to the contractions that run before its first reader, max(0,
t_gather - t_before) left to pay, and two arguments share one budget."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from spmd.autoshard_overlap import US, hide_argument_gathers

pytest.importorskip("scipy")


def _solve(nodes, charged, base):
    """Every node's one strategy taken (x = 1); returns the priced step in microseconds."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    offset = list(range(len(nodes)))
    cost = list(base)
    rows = [([k], [1.0], 1.0, 1.0) for k in offset]
    upper = {}
    n = hide_argument_gathers(nodes, offset, charged, cost, rows, len(nodes), upper)
    a = np.zeros((len(rows), n))
    for r, (cols, coefs, _, _) in enumerate(rows):
        a[r, cols] = coefs
    high = np.ones(n)
    high[list(upper)] = list(upper.values())
    res = milp(
        np.array(cost) * US,
        constraints=LinearConstraint(a, [r[2] for r in rows], [r[3] for r in rows]),
        bounds=Bounds(np.zeros(n), high),
    )
    return res.fun


def _node(name, cost_s, inputs=()):
    op = None if name == "arg" else NS(name=name)
    return NS(op=op, inputs=inputs, strategies=[NS(cost_s=cost_s)], body=None)


@pytest.mark.parametrize("gather_us, matmul_us, exposed_us", [(5, 3, 2), (2, 3, 0)])
def test_a_gather_is_paid_past_the_contraction_before_its_reader(gather_us, matmul_us, exposed_us):
    # arg (value 1, its gather charged on its column), a matmul on other data, the reader
    matmul = _node("dot_general", matmul_us / US, (7,))
    nodes = [_node("arg", 0.0), matmul, _node("add", 0.0, (1,))]
    base = [gather_us / US, matmul_us / US, 0.0]
    step = _solve(nodes, {1: [(0, gather_us / US)]}, base)
    assert step == pytest.approx(matmul_us + exposed_us)


def test_pointwise_work_hides_nothing_and_two_gathers_share_one_budget():
    nodes = [
        _node("arg", 0.0),
        _node("arg", 0.0),
        _node("add", 4 / US, (7,)),  # pointwise: its price is an unfused upper bound
        _node("dot_general", 3 / US, (7,)),
        _node("dot_general", 0.0, (1, 2)),  # first reads both arguments
    ]
    base = [2 / US, 2 / US, 4 / US, 3 / US, 0.0]
    step = _solve(nodes, {1: [(0, 2 / US)], 2: [(1, 2 / US)]}, base)
    assert step == pytest.approx(4 + 3 + (2 + 2 - 3))
