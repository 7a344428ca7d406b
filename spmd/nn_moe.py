"""A mixture-of-experts layer (GShard / Switch Transformer): a router picks each token's top-k
experts, tokens are dispatched to per-expert buffers of fixed capacity by an einsum with a
one-hot dispatch mask, each expert runs its own feed-forward, and the outputs are combined
back by the gate-weighted mask. Written in spmd.numpy / spmd.lax / spmd.nn only, so the
partitioner shards it like any program: with tokens' groups sharded over one mesh axis and
the experts over the same axis, the dispatch and combine einsums reshard between the two by
an all-to-all (GShard's expert parallelism).

Shapes: x [G, S, d] (G groups of S tokens), router [d, E], w_in [E, d, f], w_out [E, f, d];
the dispatch mask is [G, S, E, C] for an expert capacity of C tokens per group.

>>> import numpy as np, spmd.nn_moe
>>> x = np.ones((1, 4, 2), np.float32)
>>> router = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
>>> w = np.ones((2, 2, 2), np.float32)
>>> spmd.nn_moe.capacity(4, 2, capacity_factor=1.0)
2
>>> y = spmd.nn_moe.moe(x, router, w, w, capacity_factor=1.0)
>>> [int(v) for v in np.asarray(y)[0, :, 0] != 0]  # expert 0 takes the first 2 tokens
[1, 1, 0, 0]
"""

from __future__ import annotations

import math
from typing import Any

from spmd import lax, nn
from spmd import numpy as snp


def capacity(tokens: int, experts: int, capacity_factor: float = 1.25, top_k: int = 1) -> int:
    """Slots each expert has per group: top_k * tokens / experts, scaled, at least 1."""
    return max(1, math.ceil(top_k * tokens * capacity_factor / experts))


def route(probs: Any, capacity: int, top_k: int = 1) -> tuple[Any, Any]:
    """(dispatch, combine), both [G, S, E, C] from router probabilities [G, S, E].

    Choice i (i < top_k) sends each token to its i-th likeliest expert, into the next free
    slot of that expert's buffer (slots fill in token order, first choices before second);
    a token past the capacity is dropped for that choice. combine weighs each slot by the
    token's gate: the router probability, renormalised over the top_k choices when k > 1.
    """
    experts = probs.shape[-1]
    remaining = probs
    filled = snp.zeros(probs.shape[:1] + (1, experts), probs.dtype)  # [G, 1, E]
    masks, gates = [], []
    for _ in range(top_k):
        mask = lax.stop_gradient(nn.one_hot(snp.argmax(remaining, axis=-1), experts))
        slot = lax.stop_gradient(snp.cumsum(mask, axis=1) - mask + filled)  # 0-based
        filled = filled + snp.sum(mask, axis=1, keepdims=True)
        kept = mask * (slot < capacity)
        position = snp.sum(slot * kept, axis=-1)  # [G, S]: the slot it takes, if kept
        masks.append(kept[..., None] * nn.one_hot(position, capacity)[:, :, None, :])
        gates.append(snp.sum(probs * mask, axis=-1))  # [G, S]
        remaining = remaining * (1.0 - mask)
    if top_k > 1:
        total = sum(gates[1:], gates[0])
        gates = [g / total for g in gates]
    dispatch = sum(masks[1:], masks[0])
    combine = sum(
        (g[:, :, None, None] * m for g, m in zip(gates[1:], masks[1:])),
        gates[0][:, :, None, None] * masks[0],
    )
    return dispatch, combine


def moe(
    x: Any,
    router: Any,
    w_in: Any,
    w_out: Any,
    *,
    capacity_factor: float = 1.25,
    top_k: int = 1,
    activation: Any = nn.gelu,
    shardings: tuple[Any, Any] | None = None,
) -> Any:
    """The layer's output [G, S, d]: sum over a token's kept choices of gate * expert(x).

    shardings: (tokens, experts), GShard's annotations: the [G, S, E, C] dispatch and combine
    masks are constrained to `tokens`, the [E, G, C, d] expert buffers to `experts`
    (e.g. both NamedSharding(mesh, P(axes)): groups, then experts, over `axes`); None leaves
    every layout to the partitioner."""
    _, s, _ = x.shape
    experts = router.shape[-1]
    probs = nn.softmax(snp.einsum("gsd,de->gse", x, router), axis=-1)
    dispatch, combine = route(probs, capacity(s, experts, capacity_factor, top_k), top_k)
    tokens, by_expert = shardings or (None, None)
    dispatch, combine = _pin(dispatch, tokens), _pin(combine, tokens)
    # the all-to-all: groups to experts
    expert_in = _pin(snp.einsum("gsec,gsd->egcd", dispatch, x), by_expert)
    h = activation(snp.einsum("egcd,edf->egcf", expert_in, w_in))
    expert_out = _pin(snp.einsum("egcf,efd->egcd", h, w_out), by_expert)
    return snp.einsum("gsec,egcd->gsd", combine, expert_out)  # and back: experts to groups


def _pin(x: Any, sharding: Any) -> Any:
    return x if sharding is None else lax.with_sharding_constraint(x, sharding)


def load_balance_loss(x: Any, router: Any) -> Any:
    """Switch Transformer's auxiliary loss: E * sum_e (share of tokens whose top expert is e)
    * (mean router probability of e); 1 when the router spreads tokens evenly."""
    experts = router.shape[-1]
    probs = nn.softmax(snp.einsum("gsd,de->gse", x, router), axis=-1)
    share = snp.mean(
        lax.stop_gradient(nn.one_hot(snp.argmax(probs, axis=-1), experts)), axis=(0, 1)
    )
    return experts * snp.sum(share * snp.mean(probs, axis=(0, 1)))
