"""Which ops passes must not merge, fold or delete: random numbers, effects, collectives."""

from __future__ import annotations

# Ops whose two calls with equal inputs may differ, or that act on the outside world.
IMPURE = frozenset({"rng_bit_generator", "rng_uniform", "rng_normal", "random_bits",
                    "print", "callback", "send", "recv", "infeed", "outfeed"})
# Ops that must stay in the program even when their value is known at compile time.
NO_FOLD = frozenset({"sharding_constraint", "axis_index", "all_reduce", "all_gather",
                     "reduce_scatter", "all_to_all", "collective_permute", "psum", "pmax",
                     "pmin", "pmean", "ppermute", "optimization_barrier"})


def is_impure(name: str) -> bool:
    """Conservative: rng ops by any name count as impure."""
    return name in IMPURE or name.startswith("rng") or "random" in name or name in _rng_ops()


def is_foldable(name: str) -> bool:
    return not is_impure(name) and name not in NO_FOLD and name not in _collective_ops()


def _rng_ops() -> frozenset[str]:
    from spmd.ops import rng

    return frozenset(op.name for op in rng.OPS)


def _collective_ops() -> frozenset[str]:
    from spmd.ops import collective

    return frozenset(op.name for op in collective.OPS)
