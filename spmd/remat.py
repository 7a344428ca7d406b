"""spmd.remat / spmd.checkpoint (JAX's jax.checkpoint), checkpoint_name and the policies.

The wrapped function is traced into a `remat` region; differentiating it saves only what
the policy allows (by default nothing but the region's inputs) and recomputes the rest of
the forward inside the backward pass.

    >>> import spmd, spmd.numpy as snp
    >>> f = spmd.remat(lambda x: snp.sin(snp.sin(x)))
    >>> round(float(spmd.grad(lambda x: f(x).sum())(spmd.numpy.asarray(1.0))), 4)
    0.36
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from spmd.autodiff import trace_to_graph
from spmd.errors import SpmdError
from spmd.ops.remat import POLICY_KINDS, Policy
from spmd.tracing import bind
from spmd.tree import tree_flatten, tree_map, tree_unflatten


class checkpoint_policies:
    """The saving policies of jax.checkpoint_policies."""

    nothing_saveable = Policy("nothing")
    everything_saveable = Policy("everything")
    dots_saveable = Policy("dots")
    checkpoint_dots = dots_saveable
    dots_with_no_batch_dims_saveable = Policy("dots_no_batch")
    checkpoint_dots_with_no_batch_dims = dots_with_no_batch_dims_saveable

    @staticmethod
    def save_only_these_names(*names: str) -> Policy:
        """Save the values marked checkpoint_name(x, name) for these names, nothing else."""
        return Policy("names", tuple(names))

    @staticmethod
    def save_and_offload_only_these_names(
        *,
        names_which_can_be_saved: Any,
        names_which_can_be_offloaded: Any,
        offload_src: str = "device",
        offload_dst: str = "pinned_host",
    ) -> Policy:
        """Save the first names in device memory and the second ones in `offload_dst`
        memory (moved there after the forward makes them, back before the backward reads
        them); recompute everything else. Numerics are those of saving both."""
        saved = tuple(names_which_can_be_saved)
        offloaded = tuple(names_which_can_be_offloaded)
        both = set(saved) & set(offloaded)
        if both:
            raise SpmdError(
                f"names {sorted(both)} are both saved and offloaded",
                hint="list each name in names_which_can_be_saved or "
                "names_which_can_be_offloaded, not both",
            )
        if (offload_src, offload_dst) != ("device", "pinned_host"):
            raise SpmdError(
                f"offload from {offload_src!r} to {offload_dst!r} is not supported",
                hint='use offload_src="device", offload_dst="pinned_host"',
            )
        return Policy("names_offload", saved, offloaded, offload_src, offload_dst)

    @staticmethod
    def save_any_names_but_these(*names: str) -> Policy:
        """Save every checkpoint_name value except those with these names."""
        return Policy("names_but", tuple(names))


def _policy(policy: Any) -> Policy:
    if policy is None:
        return checkpoint_policies.nothing_saveable
    if isinstance(policy, Policy) and policy.kind in POLICY_KINDS:
        return policy
    raise SpmdError(
        f"remat policy {policy!r} is not one of spmd.checkpoint_policies",
        hint="use e.g. spmd.checkpoint_policies.dots_saveable or "
        "save_only_these_names('name', ...)",
    )


def remat(
    fun: Callable[..., Any] | None = None,
    *,
    prevent_cse: bool = True,
    policy: Any = None,
    static_argnums: tuple[int, ...] = (),
) -> Any:
    """fun, recomputed in the backward pass instead of saving its intermediates.

    policy: which intermediates may still be saved (spmd.checkpoint_policies); None saves
    nothing but the inputs. prevent_cse is accepted for JAX compatibility: the recomputation
    is always kept apart from the forward. static_argnums: positional args passed through
    as Python values (not traced).
    """
    if fun is None:
        return functools.partial(
            remat, prevent_cse=prevent_cse, policy=policy, static_argnums=static_argnums
        )
    chosen = _policy(policy)

    @functools.wraps(fun)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        static = {i % len(args) for i in static_argnums} if args else set()
        fixed = {i: a for i, a in enumerate(args) if i in static}
        dynamic = tuple(a for i, a in enumerate(args) if i not in static)
        leaves, treedef = tree_flatten((dynamic, kwargs))

        def call(dyn: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            it = iter(dyn)
            full = [fixed[i] if i in fixed else next(it) for i in range(len(args))]
            return fun(*full, **kw)

        graph, out_tree, captured = trace_to_graph(call, leaves, treedef)
        outs = bind("remat", *leaves, *captured, body=graph, policy=chosen, recompute=False)
        return tree_unflatten(out_tree, list(outs))

    return wrapped


checkpoint = remat


def checkpoint_name(x: Any, name: str) -> Any:
    """x unchanged, marked `name` for save_only_these_names / save_any_names_but_these."""
    return tree_map(lambda leaf: bind("checkpoint_name", leaf, label=str(name)), x)


__all__ = ["checkpoint", "checkpoint_name", "checkpoint_policies", "remat"]
