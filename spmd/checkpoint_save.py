"""Writing a checkpoint step, from one process or from every process of a multi-controller job
(mpi, tcp) into one shared folder.

When the tree holds an Array spread over several processes, every process calls save with
the same tree and writes only the shards it owns (a range held by several devices is written once,
by the process of the first device in mesh order that holds it) and a part file naming them;
process 0 alone removes leftovers, makes the temp folder and, after every process has written
(a barrier), merges the parts into index.json and renames the folder into place. Leftovers are
removed only before the first barrier of a save: every process of the job has then finished
the previous save (each save ends with a barrier), so whatever temp files exist are from a save
that crashed, never another process's work in progress. A crash at any moment leaves no listed
step that cannot be restored: index.json is written last, inside the temp folder. A tree of
host values only (numpy arrays, scalars, fully addressable Arrays) is saved by the one process
that calls save, alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from typing import Any

import numpy as np

from spmd import checkpoint_files as files
from spmd import dtypes
from spmd.errors import CheckpointError

_PART = "part-p{}.json"


def _world(leaves: list[Any]) -> tuple[int | None, int, Any]:
    """(this process's index, process count, barrier) of the save (None, 1, no-op: one writer): every process of the job
    when a leaf is an Array spread over several processes (each must call save); else this
    process alone, whichever it is (a tree of host values: save it from one process)."""
    from spmd import distributed
    from spmd.array import Array
    from spmd.named_sharding import NamedSharding

    spread = any(
        isinstance(leaf, Array)
        and isinstance(leaf.sharding, NamedSharding)
        and len({d.process_index for d in leaf.sharding.mesh.devices.flat}) > 1
        for leaf in leaves
    )
    if not spread or distributed.process_count() == 1:
        return None, 1, lambda: None
    return distributed.process_index(), distributed.process_count(), distributed.barrier


def owned_shards(leaf: Any, me: int | None) -> list[tuple[int, files.Box, np.ndarray]]:
    """(global shard number, range, data) of each distinct range of the leaf process `me`
    writes (None: the only writer, every range): a replicated range once, by the process of its
    first device in mesh order; a plain value (the same on every process) by process 0."""
    from spmd.array import Array
    from spmd.named_sharding import NamedSharding

    if not (isinstance(leaf, Array) and isinstance(leaf.sharding, NamedSharding)):
        value = np.asarray(leaf)
        box = (tuple(0 for _ in value.shape), tuple(value.shape))
        return [(0, box, value)] if me in (0, None) else []
    boxes, _ = files.shard_boxes(tuple(leaf.shape), leaf.sharding)
    writer: dict[files.Box, int] = {}
    for box, device in zip(boxes, leaf.sharding.mesh.devices.flat):
        writer.setdefault(box, device.process_index)
    mine = [
        (number, box) for number, (box, owner) in enumerate(writer.items()) if me in (owner, None)
    ]
    if not mine:
        return []
    local = {
        (tuple(s.start for s in shard.index), tuple(s.stop for s in shard.index)): shard.data
        for shard in leaf.addressable_shards
    }
    missing = [box for _, box in mine if box not in local]
    if missing:
        raise CheckpointError(
            f"process {me} should write range {missing[0]} of a leaf of shape "
            f"{tuple(leaf.shape)} but holds none of it"
        )
    return [(number, box, np.asarray(local[box])) for number, box in mine]


def _write_shards(
    folder: str, tree: Any, me: int | None
) -> tuple[list[dict[str, Any]], list[list]]:
    """Writes this process's shard files; (each leaf's path, shape and dtype; each leaf's
    shard entries written here)."""
    paths, leaves, _ = files.leaf_paths(tree)
    described, written = [], []
    for number, (path, leaf) in enumerate(zip(paths, leaves)):
        # (np.asarray only for plain values: a multi-process Array is not fully addressable)
        dtype = files.storable_dtype_name(
            leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        )
        described.append({"path": path, "shape": list(np.shape(leaf)), "dtype": dtype})
        entries = []
        for count, box, data in owned_shards(leaf, me):
            name = f"leaf_{number:04d}.shard_{count:03d}.npy"
            payload = files.npy_bytes(
                files.to_storable(np.asarray(data, dtypes.to_numpy(dtype)), dtype)
            )
            files.write_durably(os.path.join(folder, name), payload)
            entries.append(
                {
                    "file": name,
                    "start": list(box[0]),
                    "stop": list(box[1]),
                    "sha256": files.sha256(payload),
                }
            )
        written.append(entries)
    return described, written


def _merge_parts(folder: str, count: int, mine: list[list]) -> list[list]:
    """Every process's shard entries per leaf (process 0's own in `mine`); the part files are
    removed once read."""
    merged = [list(entries) for entries in mine]
    for rank in range(1, count):
        path = os.path.join(folder, _PART.format(rank))
        try:
            with open(path, encoding="utf-8") as handle:
                part = json.load(handle)
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"process {rank}'s part of {folder} is missing or unreadable ({err})",
                hint="every process must see the same checkpoint "
                "directory (a shared filesystem across hosts)",
            ) from None
        if len(part) != len(merged):
            raise CheckpointError(
                f"process {rank} saved {len(part)} leaves, process 0 saved "
                f"{len(merged)}: every process must save the same tree"
            )
        for entries, theirs in zip(merged, part):
            entries.extend(theirs)
        os.remove(path)
    for entries in merged:
        entries.sort(key=lambda entry: entry["file"])
    return merged


def _find_temp(directory: str, final: str) -> str:
    """The temp folder process 0 made for this save (the only one: leftovers were removed
    before it was made, and every process of the job waited for that)."""
    pattern = re.compile(re.escape(os.path.basename(final)) + r"\.tmp-[0-9a-f]+$")
    found = [name for name in _listing(directory) if pattern.match(name)]
    if len(found) != 1:
        raise CheckpointError(
            f"this process sees {len(found)} temp folders for "
            f"{os.path.basename(final)} in {directory!r}, expected the one "
            "process 0 made",
            hint="every process must see the same checkpoint "
            "directory (a shared filesystem across hosts), and no other job may "
            "save into it",
        )
    return os.path.join(directory, found[0])


def _listing(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def write_step(
    directory: str,
    final: str,
    tree: Any,
    step: int,
    header: dict[str, Any],
    remove_leftovers: Any,
    publish: Any,
) -> None:
    """Writes `tree` as step folder `final` (see the module docstring). remove_leftovers(dir)
    and publish(dir, step) (LATEST, pruning) run on process 0 only."""
    me, count, barrier = _world(files.leaf_paths(tree)[1])
    temp = ""
    if me in (0, None):
        os.makedirs(directory, exist_ok=True)
        remove_leftovers(directory)
        temp = f"{final}.tmp-{secrets.token_hex(4)}"
        os.makedirs(temp)
        files.fsync_directory(directory)
    barrier()  # the temp folder exists; nothing older than it is anyone's work in progress
    if me not in (0, None):
        temp = _find_temp(directory, final)
    try:
        described, written = _write_shards(temp, tree, me)
        if me not in (0, None):
            text = json.dumps(written).encode("utf-8")
            files.write_durably(os.path.join(temp, _PART.format(me)), text)
    except BaseException:
        if count == 1:
            shutil.rmtree(temp, ignore_errors=True)
        raise  # with several processes: the job stops; the next save removes the temp folder
    barrier()  # every process's shards and part are on disk
    if me in (0, None):
        _commit(directory, final, temp, count, header, described, written, step, publish)
    barrier()  # no process goes on (nor saves again) before the step is published


def _commit(
    directory: str,
    final: str,
    temp: str,
    count: int,
    header: dict[str, Any],
    described: list[dict[str, Any]],
    written: list[list],
    step: int,
    publish: Any,
) -> None:
    try:
        shards = _merge_parts(temp, count, written)
        index = dict(
            header, leaves=[dict(leaf, shards=entries) for leaf, entries in zip(described, shards)]
        )
        files.write_durably(
            os.path.join(temp, "index.json"), json.dumps(index, indent=1).encode("utf-8")
        )
        files.fsync_directory(temp)
        stale = None
        if os.path.exists(final):  # re-saving a step: move the old one aside first
            stale = f"{final}.old-{secrets.token_hex(4)}"
            os.rename(final, stale)
        os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    files.fsync_directory(directory)
    publish(directory, step)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


__all__ = ["owned_shards", "write_step"]
