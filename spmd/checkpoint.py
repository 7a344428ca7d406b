"""spmd.checkpoint: sharded, atomic checkpoints of pytrees (npy shard files + index.json).

save(dir, tree, step)  ->  dir/step_00000042/{index.json, leaf_0000.shard_000.npy, ...}
restore(dir, target)   ->  the tree, resharded onto the target's shardings
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from typing import Any

import numpy as np

from spmd import checkpoint_files as files
from spmd import checkpoint_index, checkpoint_save, dtypes
from spmd.errors import CheckpointError

FORMAT = "spmd-checkpoint"
VERSION = 1
_STEP = re.compile(r"^step_(\d+)$")
# Left by a save or a pruning that was cut short: never read, deleted by the next save.
_TEMP = re.compile(r"^(step_\d+\.(tmp|old)-[0-9a-f]+|LATEST\.tmp-[0-9a-f]+)$")


def _step_name(step: int) -> str:
    return f"step_{int(step):08d}"


def all_steps(directory: str) -> list[int]:
    """The steps with a complete checkpoint in `directory`, ascending."""
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        found = _STEP.match(name)
        if found and os.path.isfile(os.path.join(directory, name, "index.json")):
            steps.append(int(found.group(1)))
    return sorted(steps)


def latest_step(directory: str) -> int | None:
    """The step LATEST names (if it is complete), else the newest complete step, else None."""
    steps = all_steps(directory)
    try:
        with open(os.path.join(directory, "LATEST"), encoding="utf-8") as handle:
            found = _STEP.match(handle.read().strip())
    except OSError:
        found = None
    if found and int(found.group(1)) in steps:
        return int(found.group(1))
    return steps[-1] if steps else None


# -- save ------------------------------------------------------------------------------------


def _remove_leftovers(directory: str) -> None:
    """Temp folders and LATEST files of saves that crashed midway, and step folders without an
    index.json (never listed, never restorable), are deleted."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        incomplete = _STEP.match(name) and not os.path.isfile(os.path.join(path, "index.json"))
        if not (_TEMP.match(name) or incomplete):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def _prune(directory: str, step: int) -> None:
    """Deletes step's folder so that a crash at any moment leaves it either listed and whole or
    not listed: it is first renamed to a temp name (atomic), which the next save cleans up."""
    folder = os.path.join(directory, _step_name(step))
    doomed = f"{folder}.old-{secrets.token_hex(4)}"
    try:
        os.rename(folder, doomed)
    except OSError:
        return
    files.fsync_directory(directory)
    shutil.rmtree(doomed, ignore_errors=True)


def _publish_latest(directory: str, step: int) -> None:
    temp = os.path.join(directory, f"LATEST.tmp-{secrets.token_hex(4)}")
    files.write_durably(temp, _step_name(step).encode("utf-8"))
    os.replace(temp, os.path.join(directory, "LATEST"))
    files.fsync_directory(directory)


def save(directory: str, tree: Any, step: int, keep: int | None = 3) -> str:
    """Write `tree` (a pytree of Arrays, numpy arrays and scalars) as checkpoint `step`.

    Atomic: shards go into a temp folder that is renamed into place, then LATEST is
    replaced. Keeps the newest `keep` steps (None: all). Returns the step's folder. Under a
    multi-controller runtime (mpi, tcp) every process calls it with the same tree: each writes
    the shards it holds, process 0 publishes the step (spmd.checkpoint_save).
    """
    if int(step) < 0:
        raise CheckpointError(f"checkpoint step must be >= 0, got {step!r}")
    final = os.path.join(directory, _step_name(step))
    header = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "tree": files.encode_tree(tree),
    }

    def publish(directory: str, step: int) -> None:
        _publish_latest(directory, step)
        if keep is not None:
            for old in all_steps(directory)[: -max(int(keep), 1)]:
                _prune(directory, old)

    checkpoint_save.write_step(directory, final, tree, step, header, _remove_leftovers, publish)
    return final


# -- restore ---------------------------------------------------------------------------------


def _load_index(directory: str, step: int | None) -> tuple[str, dict[str, Any]]:
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise CheckpointError(
                f"no checkpoint in {directory!r}", hint="check the path, or save one first"
            )
    folder = os.path.join(directory, _step_name(step))
    path = os.path.join(folder, "index.json")
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except OSError:
        raise CheckpointError(
            f"no checkpoint for step {step} in {directory!r}",
            hint=f"available steps: {all_steps(directory)}",
        ) from None
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"corrupt index {path}: {err}") from None
    if (
        not isinstance(index, dict)
        or index.get("format") != FORMAT
        or index.get("version") != VERSION
    ):
        raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} index")
    checkpoint_index.check_folder(directory, folder)
    checkpoint_index.validate(index, folder, path)
    return folder, index


class _Reader:
    """Reads each shard file of one leaf at most once, and only when a range needs it."""

    def __init__(self, folder: str, leaf: dict[str, Any]):
        self.folder = folder
        self.leaf = leaf
        self.cache: dict[str, np.ndarray] = {}

    def region(self, box: files.Box) -> np.ndarray:
        """The global range `box`, assembled from the shard files that overlap it."""
        shape = tuple(e - s for s, e in zip(box[0], box[1]))
        out = np.zeros(shape, dtypes.to_numpy(self.leaf["dtype"]))
        covered = np.zeros(shape, bool)
        for entry in self.leaf["shards"]:
            piece = files.overlap(box, (tuple(entry["start"]), tuple(entry["stop"])))
            if piece is None:
                continue
            if entry["file"] not in self.cache:
                self.cache[entry["file"]] = files.read_shard(self.folder, entry, self.leaf)
            data = self.cache[entry["file"]]
            out[files.local(piece, box[0])] = data[files.local(piece, tuple(entry["start"]))]
            covered[files.local(piece, box[0])] = True
        if not covered.all():
            raise CheckpointError(
                f"checkpoint {self.folder} lacks part of leaf "
                f"{self.leaf['path']!r} (range {box}): shard files missing "
                "from index.json"
            )
        return out


def _restore_leaf(folder: str, leaf: dict[str, Any], sharding: Any) -> Any:
    from spmd.array import Array
    from spmd.ir.types import TensorType
    from spmd.named_sharding import NamedSharding

    shape = tuple(leaf["shape"])
    reader = _Reader(folder, leaf)
    if not isinstance(sharding, NamedSharding):
        value = reader.region((tuple(0 for _ in shape), shape))
        return value if sharding is None else Array(value, committed=True)
    boxes, padded = files.shard_boxes(shape, sharding)
    from spmd import distributed

    me, several = distributed.process_index(), distributed.process_count() > 1
    shards: list[Any] = []
    for box, buffer_shape, device in zip(boxes, padded, sharding.mesh.devices.flat):
        if several and device.process_index != me:
            shards.append(None)  # another process's device: that process reads it
            continue
        buffer = np.zeros(buffer_shape, dtypes.to_numpy(leaf["dtype"]))
        buffer[tuple(slice(0, e - s) for s, e in zip(*box))] = reader.region(box)
        shards.append(buffer)
    return Array(
        shards=shards, sharding=sharding, aval=TensorType(shape, leaf["dtype"]), committed=True
    )


def _target_sharding(leaf: Any) -> Any:
    from spmd.api import ShapeDtypeStruct
    from spmd.array import Array

    if isinstance(leaf, (Array, ShapeDtypeStruct)):
        sharding = leaf.sharding
        return sharding if sharding is not None else "array"
    return None


def restore(
    directory: str, target: Any = None, step: int | None = None, shardings: Any = None
) -> Any:
    """Read checkpoint `step` (default: the latest).

    target: a pytree of Arrays / ShapeDtypeStructs / numpy arrays whose structure, shapes
    and dtypes the checkpoint must match; Arrays come back on the target's shardings (or on
    `shardings`, a matching pytree), reading only the files each device's range overlaps.
    With no target: the saved structure, as numpy arrays (or on `shardings`).
    """
    folder, index = _load_index(directory, step)
    saved = {leaf["path"]: leaf for leaf in index["leaves"]}
    if target is None:
        per_leaf = _flat_shardings(shardings, len(index["leaves"]))
        leaves = [_restore_leaf(folder, leaf, s) for leaf, s in zip(index["leaves"], per_leaf)]
        return files.decode_tree(index["tree"], leaves)
    from spmd.tree import tree_unflatten

    paths, target_leaves, treedef = files.leaf_paths(target)
    missing = sorted(set(paths) - set(saved))
    extra = sorted(set(saved) - set(paths))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {folder} does not match the target's structure: "
            f"missing from the checkpoint {missing}, not in the target {extra}",
            hint="restore with target=None to see what was saved",
        )
    per_leaf = _flat_shardings(shardings, len(paths))
    out = []
    for path, leaf, given in zip(paths, target_leaves, per_leaf):
        entry = saved[path]
        _check_leaf(folder, entry, leaf)
        sharding = given if given is not None else _target_sharding(leaf)
        value = _restore_leaf(folder, entry, None if sharding == "array" else sharding)
        if sharding == "array":
            from spmd.array import Array

            value = Array(value)
        out.append(value)
    return tree_unflatten(treedef, out)


def _check_leaf(folder: str, entry: dict[str, Any], leaf: Any) -> None:
    shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
    dtype = dtypes.name(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
    if shape != tuple(entry["shape"]) or dtype != entry["dtype"]:
        raise CheckpointError(
            f"leaf {entry['path']!r} of checkpoint {folder} is "
            f"{entry['dtype']}{entry['shape']}, the target wants "
            f"{dtype}{list(shape)}",
            hint="restore into a target with the saved shapes and dtypes",
        )


def _flat_shardings(shardings: Any, count: int) -> list[Any]:
    from spmd.named_sharding import Sharding
    from spmd.tree import tree_leaves

    if shardings is None:
        return [None] * count
    if isinstance(shardings, Sharding):
        return [shardings] * count
    flat = tree_leaves(shardings)
    if len(flat) != count:
        raise CheckpointError(
            f"shardings has {len(flat)} entries for {count} leaves",
            hint="pass one sharding, or a pytree shaped like the target",
        )
    return flat


__all__ = ["all_steps", "latest_step", "restore", "save"]
