"""A contraction whose operands are sharded on different factors over one mesh axis (an
expert weight on its experts, a cotangent on its groups: the mixture-of-experts backward)
is priced with each operand's layout kept as it is: the bigger weight is moved between its
dims by one all-to-all rather than the smaller operand gathered onto every device.
Numerics against the unsharded run on the numpy reference interpreter; bytes by hand."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P
from tests.partitioner.helpers import mesh

G, S, D, E = 8, 2, 16, 8
N, F32 = 8, 4  # devices on 'data', bytes per float32


def contract(x: object, w: object) -> object:
    return snp.einsum("gsd,egd->gse", x, w)


def test_the_weight_moves_between_dims_instead_of_gathering_the_activation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(G, S, D)).astype(np.float32)
    w = rng.normal(size=(E, G, D)).astype(np.float32)
    with monkeypatch.context() as m:
        m.setenv("SPMD_BACKEND", "interpreter")
        want = spmd.jit(contract)(x, w)
    m8 = mesh("8")
    args = (
        spmd.device_put(x, NamedSharding(m8, P("data"))),  # [8, 2, 16] on g: 128 B a device
        spmd.device_put(w, NamedSharding(m8, P("data"))),  # [8, 8, 16] on e: 512 B a device
    )
    compiled = spmd.jit(contract).lower(*args).compile()
    got = compiled(*args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert got.sharding.spec == P("data")  # the product keeps x's groups sharded
    # w's 512 B shard goes from e- to g-sharded: an all-to-all keeps 1/8 and sends 7/8
    # (448 B). Gathering x instead (the bigger operand's layout winning) sends 7 x 128 B.
    recs = compiled.collectives()
    assert [(r.kind, r.shape, r.moved) for r in recs] == [
        ("all_to_all", (E // N, G, D), E * G * D * F32 / N * (N - 1) / N)
    ]
    assert "over gather the operands" in recs[0].reason and "896 B" in recs[0].reason
