"""Pytrees (dict/list/tuple/namedtuple/None and registered classes), through optree."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import optree

from spmd.errors import INTERNAL_DIRS

NAMESPACE = "spmd"
# tree_map calls our functions from optree's frames: an op's loc is still the user's line.
INTERNAL_DIRS.append(os.path.dirname(optree.__file__) + os.sep)


def tree_flatten(tree: Any) -> tuple[list[Any], Any]:
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def tree_unflatten(treedef: Any, leaves: Any) -> Any:
    return optree.tree_unflatten(treedef, list(leaves))


def tree_leaves(tree: Any) -> list[Any]:
    return optree.tree_leaves(tree, namespace=NAMESPACE)


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)


def tree_structure(tree: Any) -> Any:
    return optree.tree_structure(tree, namespace=NAMESPACE)


def register_pytree_node(
    cls: type, flatten: Callable[..., Any], unflatten: Callable[..., Any]
) -> None:
    """flatten(obj) -> (children, aux); unflatten(aux, children) -> obj (JAX's order)."""
    optree.register_pytree_node(
        cls, flatten, lambda aux, children: unflatten(aux, children), namespace=NAMESPACE
    )


def tree_reduce(fn: Callable[[Any, Any], Any], tree: Any, *initial: Any) -> Any:
    """functools.reduce over the leaves (JAX's tree_util.tree_reduce)."""
    import functools

    return functools.reduce(fn, tree_leaves(tree), *initial)


# JAX's jax.tree names (spmd.tree.map(...)); spmd.tree_util is this module too.
map = tree_map
leaves, flatten, unflatten, structure, reduce = (
    tree_leaves,
    tree_flatten,
    tree_unflatten,
    tree_structure,
    tree_reduce,
)
