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


def register_pytree_node(cls: type, flatten: Callable[..., Any],
                         unflatten: Callable[..., Any]) -> None:
    """flatten(obj) -> (children, aux); unflatten(aux, children) -> obj (JAX's order)."""
    optree.register_pytree_node(cls, flatten, lambda aux, children: unflatten(aux, children),
                                namespace=NAMESPACE)
