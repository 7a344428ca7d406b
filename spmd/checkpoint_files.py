"""The on-disk pieces of a checkpoint: tree structure as JSON, .npy shard files with
sha256, and which global index range each device of a sharding holds. No pickle anywhere."""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.errors import CheckpointError

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (start, stop) per dim

# ml_dtypes types are stored as the raw unsigned ints of the same width (numpy cannot load them).
_RAW = {"bfloat16": np.uint16}


# -- tree structure ------------------------------------------------------------------------


def encode_tree(tree: Any) -> Any:
    """JSON for the structure of a pytree of dicts, lists, tuples, namedtuples and None;
    anything else is a leaf (numbered in optree's order, so dict keys are sorted)."""
    counter = [0]

    def walk(node: Any) -> Any:
        if node is None:
            return {"type": "none"}
        if isinstance(node, dict):
            keys = sorted(node, key=_key_order)
            for key in keys:
                if not isinstance(key, (str, int)):
                    raise CheckpointError(f"checkpoint dict keys must be str or int, got {key!r}")
            return {
                "type": "dict",
                "keys": [[type(k).__name__, k] for k in keys],
                "children": [walk(node[k]) for k in keys],
            }
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return {
                "type": "namedtuple",
                "name": type(node).__name__,
                "fields": list(node._fields),
                "children": [walk(v) for v in node],
            }
        if isinstance(node, (list, tuple)):
            return {"type": type(node).__name__, "children": [walk(v) for v in node]}
        counter[0] += 1
        return {"type": "leaf", "index": counter[0] - 1}

    return walk(tree)


def _key_order(key: Any) -> tuple[str, Any]:
    return (type(key).__name__, key)


def decode_tree(structure: Any, leaves: Sequence[Any]) -> Any:
    """The pytree of `structure` with its leaves; namedtuples come back as dicts."""
    kind = structure.get("type") if isinstance(structure, dict) else None
    if kind == "none":
        return None
    if kind == "leaf":
        return leaves[structure["index"]]
    children = [decode_tree(c, leaves) for c in structure.get("children", [])]
    if kind == "dict":
        return {(int(k) if t == "int" else k): v for (t, k), v in zip(structure["keys"], children)}
    if kind == "namedtuple":
        return dict(zip(structure["fields"], children))
    if kind == "list":
        return children
    if kind == "tuple":
        return tuple(children)
    raise CheckpointError(f"unknown node {structure!r} in the checkpoint's tree structure")


def leaf_paths(tree: Any) -> tuple[list[str], list[Any], Any]:
    """('params/w', ...) names, the leaves and the treedef, in spmd.tree's leaf order."""
    import optree

    from spmd.tree import NAMESPACE

    paths, leaves, treedef = optree.tree_flatten_with_path(tree, namespace=NAMESPACE)
    return ["/".join(str(p) for p in path) or "<root>" for path in paths], leaves, treedef


# -- arrays and files ------------------------------------------------------------------------


def to_storable(data: np.ndarray, dtype: str) -> np.ndarray:
    raw = _RAW.get(dtype)
    data = np.asarray(data, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    return data.view(raw) if raw is not None else data


def from_storable(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype in _RAW:
        return data.view(dtypes.to_numpy(dtype))
    return data


def npy_bytes(data: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, data, allow_pickle=False)
    return buffer.getvalue()


def write_durably(path: str, payload: bytes) -> None:
    """Write and fsync, so a rename after it publishes complete data."""
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def read_shard(folder: str, entry: dict[str, Any], leaf: dict[str, Any]) -> np.ndarray:
    """One shard file of the folder (never a path leading out of it, nor a symlink), checked
    against its hash, shape and dtype."""
    from spmd.checkpoint_index import shard_path

    path = shard_path(folder, entry["file"], os.path.join(folder, "index.json"))
    where = f"{path} (leaf {leaf['path']!r})"
    try:
        # O_NOFOLLOW: a symlink swapped in after the index was checked is refused too
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(descriptor, "rb") as handle:
            payload = handle.read()
    except OSError as err:
        raise CheckpointError(
            f"missing shard file {where}: {err.strerror}",
            hint="the checkpoint is incomplete; restore another step",
        ) from None
    if sha256(payload) != entry["sha256"]:
        raise CheckpointError(
            f"corrupt shard file {where}: sha256 does not match index.json",
            hint="the file changed after it was written; restore another step",
        )
    try:
        data = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"unreadable shard file {where}: {err}") from None
    want = tuple(b - a for a, b in zip(entry["start"], entry["stop"]))
    stored = np.dtype(_RAW.get(leaf["dtype"], dtypes.to_numpy(leaf["dtype"])))
    if data.shape != want or data.dtype != stored:
        raise CheckpointError(
            f"shard file {where} holds {data.dtype}{list(data.shape)}, "
            f"index.json says {stored}{list(want)}"
        )
    return from_storable(data, leaf["dtype"])


# -- index ranges ----------------------------------------------------------------------------


def shard_boxes(shape: tuple[int, ...], sharding: Any) -> tuple[list[Box], list[tuple[int, ...]]]:
    """Per device of the sharding's mesh (row-major): the global range it holds, and its
    padded buffer shape (uneven splits pad the last shards, as device_put does)."""
    mesh = sharding.mesh
    names, sizes = tuple(mesh.axis_names), tuple(mesh.axis_sizes)
    dims = sharding.dim_axes(len(shape))
    counts = [math.prod(sizes[names.index(a)] for a in axes) for axes in dims]
    padded = tuple(-(-n // count) if count > 1 else n for n, count in zip(shape, counts))
    boxes: list[Box] = []
    for flat in range(math.prod(sizes)):
        coords = dict(zip(names, (int(c) for c in np.unravel_index(flat, sizes))))
        start, stop = [], []
        for n, axes, size in zip(shape, dims, padded):
            group = 0
            for a in axes:  # major axis first
                group = group * sizes[names.index(a)] + coords[a]
            low = min(group * size, n)
            start.append(low)
            stop.append(min(low + size, n))
        boxes.append((tuple(start), tuple(stop)))
    return boxes, [padded] * len(boxes)


def overlap(a: Box, b: Box) -> Box | None:
    start = tuple(max(x, y) for x, y in zip(a[0], b[0]))
    stop = tuple(min(x, y) for x, y in zip(a[1], b[1]))
    if any(s >= e for s, e in zip(start, stop)) and start:
        return None
    return start, stop


def local(box: Box, origin: tuple[int, ...]) -> tuple[slice, ...]:
    """`box` as slices into an array whose [0, 0, ...] is global `origin`."""
    return tuple(slice(s - o, e - o) for s, e, o in zip(box[0], box[1], origin))


def storable_dtype_name(dtype: Any) -> str:
    name = dtypes.name(dtype)  # not narrowed: numpy leaves keep their dtype with x64 off
    if name not in dtypes.ALL:
        raise CheckpointError(f"cannot checkpoint dtype {name!r}")
    return name


__all__ = ["decode_tree", "encode_tree", "leaf_paths", "read_shard", "shard_boxes"]
