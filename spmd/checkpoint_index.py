"""What a checkpoint's index.json must hold before restore trusts any of it: every key present
with the right type, dtypes from spmd.dtypes, shard ranges inside the leaf, shard files that are
plain names inside the step folder (no `..`, no absolute path, no symlink out) and large enough
for the ranges they claim, so that restore never reads outside the checkpoint nor allocates more
than the files on disk hold. Every problem is a CheckpointError naming the index and the entry.
"""

from __future__ import annotations

import math
import os
import re
import stat
from typing import Any

from spmd import dtypes
from spmd.errors import CheckpointError

# What save() writes (leaf_0000.shard_000.npy); anything else in "file" is refused.
SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RAW_ITEMSIZE = {"bfloat16": 2}
HINT = "the checkpoint's index.json was damaged or not written by spmd.checkpoint; restore another step"


def _fail(path: str, problem: str) -> CheckpointError:
    return CheckpointError(f"malformed checkpoint index {path}: {problem}", hint=HINT)


def _int_list(value: Any, length: int | None, path: str, what: str) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise _fail(path, f"{what} is {value!r}, not a list of non-negative integers")
    if length is not None and len(value) != length:
        raise _fail(path, f"{what} has {len(value)} entries, the leaf has {length} dimensions")
    return value


def shard_path(folder: str, name: Any, index_path: str) -> str:
    """The shard file `name` inside folder; CheckpointError if it is not a plain file name of
    the folder (a `..`, an absolute path, a separator) or is a symlink or not a regular file."""
    if not isinstance(name, str) or not SHARD_NAME.match(name) or name in (".", ".."):
        raise _fail(
            index_path, f"shard file {name!r} is not a plain file name inside the checkpoint folder"
        )
    path = os.path.join(folder, name)
    try:
        info = os.lstat(path)
    except OSError:
        return path  # missing: reading it reports a missing shard
    if not stat.S_ISREG(info.st_mode):
        raise _fail(index_path, f"shard file {name!r} is a symlink or not a regular file")
    return path


def check_folder(directory: str, folder: str) -> None:
    """The step folder is a folder of directory itself, not a symlink leading elsewhere."""
    inside = os.path.dirname(os.path.realpath(folder)) == os.path.realpath(directory)
    if os.path.islink(folder) or not inside:
        raise CheckpointError(
            f"checkpoint folder {folder} is a symlink; restore refuses to "
            "follow it out of the checkpoint directory",
            hint=HINT,
        )


def validate(index: Any, folder: str, path: str) -> None:
    """Checks an index.json's content (see the module docstring); raises CheckpointError."""
    if not isinstance(index, dict):
        raise _fail(path, f"it holds a {type(index).__name__}, not an object")
    for key, kind in (("step", int), ("tree", dict), ("leaves", list)):
        if not isinstance(index.get(key), kind):
            raise _fail(path, f"key {key!r} is missing or not a {kind.__name__}")
    seen: set[str] = set()
    for number, leaf in enumerate(index["leaves"]):
        where = f"leaf {number}"
        if not isinstance(leaf, dict):
            raise _fail(path, f"{where} is not an object")
        for key, kind in (("path", str), ("dtype", str), ("shape", list), ("shards", list)):
            if not isinstance(leaf.get(key), kind):
                raise _fail(path, f"{where} lacks {key!r} (or it is not a {kind.__name__})")
        where = f"leaf {leaf['path']!r}"
        if leaf["path"] in seen:
            raise _fail(path, f"{where} appears twice")
        seen.add(leaf["path"])
        if leaf["dtype"] not in dtypes.ALL:
            raise _fail(path, f"{where} has unknown dtype {leaf['dtype']!r}")
        shape = _int_list(leaf["shape"], None, path, f"{where}'s shape")
        _check_shards(leaf, shape, folder, path, where)
    _check_tree(index["tree"], len(index["leaves"]), path)


def _check_shards(
    leaf: dict[str, Any], shape: list[int], folder: str, path: str, where: str
) -> None:
    """Shard ranges inside the leaf, covering it, each backed by a file large enough: so the
    leaf's elements never exceed what the shard files hold on disk."""
    itemsize = _RAW_ITEMSIZE.get(leaf["dtype"]) or dtypes.to_numpy(leaf["dtype"]).itemsize
    held = 0
    for count, entry in enumerate(leaf["shards"]):
        what = f"{where}, shard {count}"
        if not isinstance(entry, dict):
            raise _fail(path, f"{what} is not an object")
        start = _int_list(entry.get("start"), len(shape), path, f"{what}'s start")
        stop = _int_list(entry.get("stop"), len(shape), path, f"{what}'s stop")
        if any(not a <= b <= n for a, b, n in zip(start, stop, shape)):
            raise _fail(path, f"{what} covers {start}..{stop}, outside the leaf's shape {shape}")
        if not isinstance(entry.get("sha256"), str) or not SHA256.match(entry["sha256"]):
            raise _fail(path, f"{what} lacks a sha256 (64 hex digits)")
        file = shard_path(folder, entry.get("file"), path)
        volume = math.prod(b - a for a, b in zip(start, stop))
        try:
            size = os.stat(file).st_size
        except OSError:
            size = None  # a missing file is reported when a range needs it
        if size is not None and volume * itemsize > size:
            raise _fail(
                path,
                f"{what} claims {volume} elements of {leaf['dtype']} but its file "
                f"{entry['file']!r} holds only {size} bytes",
            )
        held += volume
    if held < math.prod(shape):
        raise _fail(
            path,
            f"{where} has shape {shape} ({math.prod(shape)} elements) but its "
            f"shards hold only {held}",
        )


def _is_key(pair: Any) -> bool:
    """A dict node's [type, key] pair as encode_tree writes it."""
    if not isinstance(pair, list) or len(pair) != 2:
        return False
    kind, key = pair
    return (kind == "str" and isinstance(key, str)) or (kind == "int" and type(key) is int)


def _check_tree(node: Any, leaves: int, path: str) -> None:
    """The tree structure refers only to existing leaves, with well-formed nodes."""
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise _fail(path, f"tree node {node!r:.80} is not an object with a 'type'")
    kind = node["type"]
    if kind == "none":
        return
    if kind == "leaf":
        index = node.get("index")
        if type(index) is not int or not 0 <= index < leaves:
            raise _fail(path, f"tree leaf index {index!r} is not one of the {leaves} leaves")
        return
    children = node.get("children")
    if kind not in ("dict", "namedtuple", "list", "tuple") or not isinstance(children, list):
        raise _fail(path, f"tree node of type {kind!r} is unknown or lacks children")
    names = node.get("keys") if kind == "dict" else node.get("fields")
    if kind == "dict" and (not isinstance(names, list) or not all(map(_is_key, names))):
        raise _fail(path, "a dict node's keys are not [type, key] pairs")
    if kind == "namedtuple" and (
        not isinstance(names, list) or not all(isinstance(f, str) for f in names)
    ):
        raise _fail(path, "a namedtuple node's fields are not names")
    if names is not None and len(names) != len(children):
        raise _fail(path, f"a {kind} node has {len(names)} keys for {len(children)} children")
    for child in children:
        _check_tree(child, leaves, path)


__all__ = ["check_folder", "shard_path", "validate"]
