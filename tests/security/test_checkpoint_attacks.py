"""A checkpoint's index.json is input: traversal, absolute paths, symlinks out of the folder and
every malformed field are refused with a CheckpointError before any outside file is read or any
oversized buffer allocated, and the untouched steps still restore exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from spmd import checkpoint
from spmd import checkpoint_files as files
from spmd.errors import CheckpointError

TREE = {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(4, np.float32)}


@pytest.fixture
def saved(tmp_path):
    """(checkpoint dir, step 2's folder, its index) with steps 1 and 2 saved; and an outside
    .npy holding other data, the file an attacker points the index at."""
    directory = tmp_path / "ckpt"
    checkpoint.save(str(directory), TREE, step=1)
    checkpoint.save(str(directory), TREE, step=2)
    folder = directory / "step_00000002"
    outside = tmp_path / "outside.npy"
    outside.write_bytes(files.npy_bytes(np.full((3, 4), 666.0)))
    return directory, folder, json.loads((folder / "index.json").read_text()), outside


def rewrite(folder, index) -> None:
    (folder / "index.json").write_text(json.dumps(index))


def point_w_at(folder, index, name: str, payload: bytes) -> None:
    shard = index["leaves"][1]["shards"][0]  # leaves sort by path: b, w
    shard["file"] = name
    shard["sha256"] = files.sha256(payload)  # the attacker keeps the hash consistent
    rewrite(folder, index)


def assert_refused_and_step_1_intact(directory, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        checkpoint.restore(str(directory), step=2)
    got = checkpoint.restore(str(directory), step=1)
    np.testing.assert_array_equal(got["w"], TREE["w"])
    np.testing.assert_array_equal(got["b"], TREE["b"])


@pytest.mark.parametrize("how", ["relative", "absolute", "etc_passwd"])
def test_shard_paths_outside_the_folder_are_refused(saved, how) -> None:
    directory, folder, index, outside = saved
    name = {
        "relative": os.path.relpath(outside, folder),
        "absolute": str(outside),
        "etc_passwd": "../../../../../../../../etc/passwd",
    }[how]
    point_w_at(folder, index, name, outside.read_bytes())
    assert_refused_and_step_1_intact(directory, "is not a plain file name inside the checkpoint")


def test_a_symlinked_shard_is_refused(saved) -> None:
    directory, folder, index, outside = saved
    (folder / "evil.npy").symlink_to(outside)
    point_w_at(folder, index, "evil.npy", outside.read_bytes())
    assert_refused_and_step_1_intact(directory, "is a symlink or not a regular file")


def test_a_symlinked_step_folder_is_refused(saved, tmp_path) -> None:
    directory, folder, _, _ = saved
    elsewhere = tmp_path / "elsewhere"
    os.rename(folder, elsewhere)
    os.symlink(elsewhere, folder)
    assert_refused_and_step_1_intact(directory, "is a symlink")


def _drop(key):
    def change(index):
        index.pop(key)

    return change


def _set_leaf(key, value):
    def change(index):
        index["leaves"][1][key] = value

    return change


def _set_shard(key, value):
    def change(index):
        index["leaves"][1]["shards"][0][key] = value

    return change


def _drop_shard_key(key):
    def change(index):
        index["leaves"][1]["shards"][0].pop(key)

    return change


MALFORMED = {
    "no leaves": (_drop("leaves"), "key 'leaves' is missing"),
    "no tree": (_drop("tree"), "key 'tree' is missing"),
    "leaf without dtype": (_set_leaf("dtype", None), "lacks 'dtype'"),
    "unknown dtype": (_set_leaf("dtype", "object"), "unknown dtype 'object'"),
    "negative dim": (_set_leaf("shape", [3, -4]), "not a list of non-negative integers"),
    "huge shape": (_set_leaf("shape", [3, 10**12]), "outside the leaf's shape|shards hold only"),
    "shape with more elements than the shards": (
        _set_leaf("shape", [300, 4]),
        "shards hold only 12",
    ),
    "shard range past the file": (_set_shard("stop", [3000, 4]), "outside the leaf's shape"),
    "shard without sha256": (_drop_shard_key("sha256"), "lacks a sha256"),
    "shard without file": (_drop_shard_key("file"), "None is not a plain file name"),
    "start of wrong rank": (_set_shard("start", [0]), "has 1 entries, the leaf has 2"),
    "tree leaf out of range": (
        lambda i: i["tree"]["children"][0].update(index=7),
        "tree leaf index 7",
    ),
    "bad tree node": (lambda i: i["tree"].update(type="set"), "type 'set' is unknown"),
    "not an object": (lambda i: i["leaves"].append([1, 2]), "leaf 2 is not an object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_index_is_a_checkpoint_error(saved, case) -> None:
    directory, folder, index, _ = saved
    change, match = MALFORMED[case]
    change(index)
    rewrite(folder, index)
    assert_refused_and_step_1_intact(directory, match)


def test_a_shard_that_claims_more_than_its_file_holds_is_refused_before_allocating(saved):
    directory, folder, index, _ = saved
    leaf = index["leaves"][1]
    leaf["shape"] = [3, 4_000_000_000]  # 96 GB of float64, claimed by one 176-byte file
    leaf["shards"][0]["stop"] = [3, 4_000_000_000]
    rewrite(folder, index)
    assert_refused_and_step_1_intact(directory, "holds only")


def test_an_index_that_is_not_json_or_too_deep_is_a_checkpoint_error(saved) -> None:
    directory, folder, _, _ = saved
    for text in ("{not json", "[" * 100_000 + "]" * 100_000, '"a string"'):
        (folder / "index.json").write_text(text)
        assert_refused_and_step_1_intact(directory, "corrupt index|is not a spmd-checkpoint")
