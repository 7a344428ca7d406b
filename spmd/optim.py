"""spmd.optim: optimizers as pure init/update functions over pytrees (optax-like, but
`update` returns the new params), learning-rate schedules and gradient clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from spmd.errors import ShardingError
from spmd.tree import tree_flatten, tree_leaves, tree_map, tree_unflatten

Schedule = Callable[[Any], Any]


class Optimizer(NamedTuple):
    """`state = opt.init(params)`; `params, state = opt.update(grads, state, params)`."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple[Any, Any]]


def _snp() -> Any:
    from spmd import numpy as snp

    return snp


# -- schedules -------------------------------------------------------------------------------


def constant(learning_rate: float) -> Schedule:
    """The same learning rate at every step."""
    return lambda step: _snp().asarray(learning_rate, "float32")


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0) -> Schedule:
    """Linear warmup from 0 to `peak` over warmup_steps, then cosine decay to `end` at
    total_steps (constant `end` after)."""
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: Any) -> Any:
        snp = _snp()
        t = snp.asarray(step, "float32")
        warm = peak * t / max(warmup_steps, 1)
        progress = snp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + snp.cos(math.pi * progress))
        return snp.asarray(snp.where(t < warmup_steps, warm, cosine), "float32")

    return schedule


def _as_schedule(learning_rate: float | Schedule) -> Schedule:
    return learning_rate if callable(learning_rate) else constant(float(learning_rate))


# -- clipping --------------------------------------------------------------------------------


def global_norm(tree: Any) -> Any:
    """sqrt of the sum of squares of every leaf (float32)."""
    snp = _snp()
    leaves = tree_leaves(tree)
    if not leaves:
        return snp.asarray(0.0, "float32")
    total = sum(snp.sum(snp.square(snp.asarray(x, "float32"))) for x in leaves)
    return snp.sqrt(total)


def clip_by_global_norm(grads: Any, max_norm: float) -> tuple[Any, Any]:
    """Scale grads so that their global norm is at most max_norm; returns (clipped, norm)."""
    snp = _snp()
    norm = global_norm(grads)
    scale = snp.minimum(1.0, max_norm / snp.maximum(norm, 1e-12))
    clipped = tree_map(lambda g: snp.asarray(g * scale, g.dtype), grads)
    return clipped, norm


# -- state sharding --------------------------------------------------------------------------


class StateSharding:
    """Where optimizer moments live: like their parameter (None), or ZeRO-1 over a mesh axis."""

    def __init__(self, axis: str | None, mesh: Any, param_specs: Any = None):
        if axis is not None and mesh is None:
            from spmd.mesh import current_mesh

            mesh = current_mesh()  # the mesh of an enclosing `with mesh:` block
        if axis is not None and mesh is None:
            raise ShardingError(
                f"shard_state_over={axis!r} needs the mesh", hint="pass mesh=... to the optimizer"
            )
        if axis is not None and axis not in mesh.axis_names:
            raise ShardingError(
                f"shard_state_over={axis!r} is not an axis of {mesh!r}",
                hint=f"use one of {mesh.axis_names!r}",
            )
        self.axis = axis
        self.mesh = mesh
        self.param_specs = param_specs

    def specs(self, params: Any) -> list[Any] | None:
        """One NamedSharding per param leaf for its moments (None: follow the param)."""
        if self.axis is None:
            return None
        leaves, _ = tree_flatten(params)
        given = tree_flatten(self.param_specs)[0] if self.param_specs is not None else None
        out = []
        for i, leaf in enumerate(leaves):
            base = given[i] if given is not None else _spec_of(leaf, self.mesh)
            out.append(self._zero_spec(tuple(np.shape(leaf)), base))
        return out

    def param_shardings(self, params: Any) -> list[Any] | None:
        """With ZeRO-1, updated params go back to their own layout (an all-gather)."""
        from spmd.named_sharding import NamedSharding, PartitionSpec

        if self.axis is None:
            return None
        leaves, _ = tree_flatten(params)
        given = tree_flatten(self.param_specs)[0] if self.param_specs is not None else None
        return [
            NamedSharding(
                self.mesh,
                PartitionSpec(*(given[i] if given is not None else _spec_of(leaf, self.mesh))),
            )
            for i, leaf in enumerate(leaves)
        ]

    def _zero_spec(self, shape: tuple[int, ...], base: tuple[Any, ...]) -> Any:
        from spmd.named_sharding import NamedSharding, PartitionSpec

        entries = list(base) + [None] * (len(shape) - len(base))
        used = {a for e in entries if e for a in ((e,) if isinstance(e, str) else e)}
        size = self.mesh.shape[self.axis]
        if self.axis not in used:
            free = [
                d
                for d in range(len(shape))
                if shape[d] % (size * _split(entries[d], self.mesh)) == 0 and shape[d] >= size
            ]
            if free:
                dim = max(free, key=lambda d: shape[d])
                entries[dim] = _with_axis(entries[dim], self.axis)
        return NamedSharding(self.mesh, PartitionSpec(*entries))


def _split(entry: Any, mesh: Any) -> int:
    if entry is None:
        return 1
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[a] for a in axes)


def _with_axis(entry: Any, axis: str) -> Any:
    if entry is None:
        return axis
    return ((entry,) if isinstance(entry, str) else tuple(entry)) + (axis,)


def _spec_of(leaf: Any, mesh: Any) -> tuple[Any, ...]:
    from spmd.named_sharding import NamedSharding

    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
        return tuple(sharding.spec)
    return ()


def _place(tree: Any, specs: list[Any] | None) -> Any:
    """Constrain (under jit) or put (eagerly) each leaf on its moment sharding."""
    if specs is None:
        return tree
    from spmd.dispatch import device_put
    from spmd.lax import with_sharding_constraint
    from spmd.tracing import current_trace

    leaves, treedef = tree_flatten(tree)
    if current_trace() is None:
        placed = [device_put(x, s) for x, s in zip(leaves, specs)]
    else:
        placed = [with_sharding_constraint(x, s) for x, s in zip(leaves, specs)]
    return tree_unflatten(treedef, placed)


def _zeros_like(params: Any) -> Any:
    """Zeros laid out like each parameter (a committed sharded parameter's state is too)."""
    from spmd.array import Array
    from spmd.dispatch import device_put
    from spmd.named_sharding import NamedSharding

    snp = _snp()

    def zeros(p: Any) -> Any:
        z = snp.zeros_like(p)
        sharding = getattr(p, "sharding", None)
        if isinstance(p, Array) and isinstance(sharding, NamedSharding):
            return device_put(z, sharding)
        return z

    return tree_map(zeros, params)


def _step_zero() -> Any:
    return _snp().asarray(0, "int32")


# -- optimizers ------------------------------------------------------------------------------


def sgd(
    learning_rate: float | Schedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> Optimizer:
    """SGD: v = momentum*v + g; p -= lr * (g + momentum*v if nesterov else v)."""
    schedule = _as_schedule(learning_rate)

    def init(params: Any) -> dict[str, Any]:
        state: dict[str, Any] = {"step": _step_zero()}
        if momentum:
            state["momentum"] = _zeros_like(params)
        return state

    def update(grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict[str, Any]]:
        snp = _snp()
        lr = schedule(state["step"])
        if weight_decay:
            grads = tree_map(lambda g, p: g + weight_decay * p, grads, params)
        new_state: dict[str, Any] = {"step": state["step"] + 1}
        direction = grads
        if momentum:
            velocity = tree_map(lambda v, g: momentum * v + g, state["momentum"], grads)
            new_state["momentum"] = velocity
            direction = velocity
            if nesterov:
                direction = tree_map(lambda g, v: g + momentum * v, grads, velocity)
        new_params = tree_map(lambda p, d: snp.asarray(p - lr * d, p.dtype), params, direction)
        return new_params, new_state

    return Optimizer(init, update)


def adamw(
    learning_rate: float | Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    shard_state_over: str | None = None,
    *,
    mesh: Any = None,
    param_specs: Any = None,
    mask: Any = None,
) -> Optimizer:
    """AdamW with bias correction and decoupled weight decay (lr * wd * p), optional
    clipping by global norm. `shard_state_over="data", mesh=mesh` shards the moments over
    that axis (ZeRO-1) on their largest divisible dim. `mask`: a pytree of bools (or a
    function params -> pytree) choosing the params that get weight decay."""
    schedule = _as_schedule(learning_rate)
    placement = StateSharding(shard_state_over, mesh, param_specs)
    specs_cache: dict[Any, Any] = {}

    def specs_for(params: Any, which: str = "state") -> list[Any] | None:
        key = (tree_flatten(params)[1], which)
        if key not in specs_cache:
            find = placement.specs if which == "state" else placement.param_shardings
            specs_cache[key] = find(params)
        return specs_cache[key]

    def init(params: Any) -> dict[str, Any]:
        specs = specs_for(params)
        return {
            "step": _step_zero(),
            "mu": _place(_zeros_like(params), specs),
            "nu": _place(_zeros_like(params), specs),
        }

    def update(grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict[str, Any]]:
        snp = _snp()
        specs = specs_for(params)
        if clip_norm is not None:
            grads, _ = clip_by_global_norm(grads, clip_norm)
        step = state["step"] + 1
        lr = schedule(state["step"])
        t = snp.asarray(step, "float32")
        correction1 = 1.0 - snp.power(b1, t)
        correction2 = 1.0 - snp.power(b2, t)
        grads = _place(grads, specs)
        mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["mu"], grads)
        nu = tree_map(lambda v, g: b2 * v + (1 - b2) * snp.square(g), state["nu"], grads)
        mu, nu = _place(mu, specs), _place(nu, specs)
        decay = _decay_mask(mask, params)

        def step_param(p: Any, m: Any, v: Any, decayed: bool) -> Any:
            direction = (m / correction1) / (snp.sqrt(v / correction2) + eps)
            if weight_decay and decayed:
                direction = direction + weight_decay * p
            return snp.asarray(p - lr * direction, p.dtype)

        new_params = tree_map(step_param, params, mu, nu, decay)
        new_params = _place(new_params, specs_for(params, "params"))
        return new_params, {"step": step, "mu": mu, "nu": nu}

    return Optimizer(init, update)


def _decay_mask(mask: Any, params: Any) -> Any:
    if mask is None:
        return tree_map(lambda _: True, params)
    return mask(params) if callable(mask) else mask


def apply_updates(params: Any, updates: Any) -> Any:
    """params + updates, leaf by leaf (for optax-style update functions)."""
    return tree_map(lambda p, u: p + u, params, updates)


__all__ = [
    "Optimizer",
    "adamw",
    "apply_updates",
    "clip_by_global_norm",
    "constant",
    "global_norm",
    "sgd",
    "warmup_cosine",
]
