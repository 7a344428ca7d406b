"""spmd.debug: JAX's jax.debug names for looking at how arrays are laid out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spmd.visualize import sharding_table


def visualize_array_sharding(arr: Any, **options: Any) -> None:
    """Print which device holds which block of a 1-d or 2-d array (JAX's name)."""
    print(sharding_table(arr))


def inspect_array_sharding(value: Any, *, callback: Callable[[Any], Any]) -> None:
    """Call callback(sharding) with x's sharding: the Array's own, or inside jit the one
    sharding in types gives it (spmd.typeof(x).sharding)."""
    from spmd.explicit import typeof

    callback(typeof(value).sharding)
