"""spmd.checkpoint: exact round trips across meshes, atomic saves, keep-K, corruption and
mismatch errors, bfloat16."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import ml_dtypes
import numpy as np
import pytest

import spmd
from spmd import checkpoint
from spmd import checkpoint_files as files
from spmd.errors import CheckpointError

RNG = np.random.default_rng(0)
W = RNG.standard_normal((12, 8)).astype(np.float32)
B = RNG.standard_normal((10,)).astype(np.float32)  # 10 rows: uneven over 4 and 8 devices
E = RNG.standard_normal((6, 4)).astype(ml_dtypes.bfloat16)


def mesh_2x4():
    return spmd.make_mesh((2, 4), ("data", "model"))


def sharded_tree(mesh):
    def put(x, *spec):
        return spmd.device_put(x, spmd.NamedSharding(mesh, spmd.P(*spec)))

    return {
        "params": {
            "w": put(W, "data", "model"),
            "b": put(B, "model"),
            "embed": put(E, None, "data"),
        },
        "opt": {"step": np.int32(7), "mu": [put(W * 2, "model"), None]},
        "meta": (1.5, 3),
    }


def as_numpy(tree):
    return spmd.tree_map(np.asarray, tree)


def assert_tree_equal(got, want):
    got_leaves, got_def = spmd.tree_flatten(as_numpy(got))
    want_leaves, want_def = spmd.tree_flatten(as_numpy(want))
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g.reshape(-1).view(np.uint8), w.reshape(-1).view(np.uint8))


def target_on(mesh, specs):
    """A ShapeDtypeStruct target with the given spec per param."""
    return {
        "params": {
            name: spmd.ShapeDtypeStruct(
                value.shape, value.dtype, spmd.NamedSharding(mesh, spmd.P(*specs[name]))
            )
            for name, value in (("w", W), ("b", B), ("embed", E))
        },
        "opt": {"step": np.int32(0), "mu": [spmd.ShapeDtypeStruct(W.shape, W.dtype), None]},
        "meta": (0.0, 0),
    }


def test_save_writes_each_unique_shard_once_with_an_index(tmp_path):
    tree = sharded_tree(mesh_2x4())
    folder = checkpoint.save(str(tmp_path), tree, step=42)
    assert os.path.basename(folder) == "step_00000042"
    index = json.loads((tmp_path / "step_00000042" / "index.json").read_text())
    by_path = {leaf["path"]: leaf for leaf in index["leaves"]}
    assert len(by_path["params/w"]["shards"]) == 8
    assert len(by_path["params/b"]["shards"]) == 4  # replicated over "data": written once
    assert len(by_path["opt/mu/0"]["shards"]) == 4
    assert by_path["params/embed"]["dtype"] == "bfloat16"
    assert by_path["params/b"]["shards"][3]["start"] == [9] and by_path["params/b"]["shards"][3][
        "stop"
    ] == [10]
    assert (tmp_path / "LATEST").read_text() == "step_00000042"
    assert checkpoint.latest_step(str(tmp_path)) == 42
    assert checkpoint.all_steps(str(tmp_path)) == [42]


def test_restore_without_target_gives_numpy_in_the_saved_structure(tmp_path):
    tree = sharded_tree(mesh_2x4())
    checkpoint.save(str(tmp_path), tree, step=1)
    got = checkpoint.restore(str(tmp_path))
    assert isinstance(got["params"]["w"], np.ndarray)
    assert got["params"]["embed"].dtype == ml_dtypes.bfloat16
    assert_tree_equal(got, tree)


@pytest.mark.parametrize(
    "mesh_shape,specs",
    [
        ((8, 1), {"w": ("data",), "b": ("data",), "embed": (None, "data")}),
        ((4, 2), {"w": ("model", "data"), "b": (("data", "model"),), "embed": ("data",)}),
        ((1,), {"w": (), "b": (), "embed": ()}),
    ],
)
def test_save_on_2x4_restores_exactly_on_another_mesh(tmp_path, mesh_shape, specs):
    tree = sharded_tree(mesh_2x4())
    checkpoint.save(str(tmp_path), tree, step=3)
    mesh = spmd.make_mesh(mesh_shape, ("data", "model")[: len(mesh_shape)])
    got = checkpoint.restore(str(tmp_path), target_on(mesh, specs))
    assert_tree_equal(got, tree)
    for name in ("w", "b", "embed"):
        value = got["params"][name]
        assert value.sharding == spmd.NamedSharding(mesh, spmd.P(*specs[name]))
        for shard in value.addressable_shards:
            np.testing.assert_array_equal(shard.data, np.asarray(tree["params"][name])[shard.index])


def test_restore_reads_each_shard_file_once_and_only_where_needed(tmp_path, monkeypatch):
    checkpoint.save(str(tmp_path), sharded_tree(mesh_2x4()), step=3)
    real_read = files.read_shard
    reads = []

    def spy(folder, entry, leaf):
        reads.append((leaf["path"], entry["file"]))
        return real_read(folder, entry, leaf)

    monkeypatch.setattr(files, "read_shard", spy)
    mesh = spmd.make_mesh((8, 1), ("data", "model"))
    target = target_on(mesh, {"w": ("data",), "b": (), "embed": ()})
    got = checkpoint.restore(str(tmp_path), target)
    np.testing.assert_array_equal(np.asarray(got["params"]["w"]), W)
    reads = [r for r in reads if r[0] == "params/w"]
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 8  # 8 files, each once


def test_restored_arrays_feed_jit_on_their_new_mesh(tmp_path):
    checkpoint.save(str(tmp_path), sharded_tree(mesh_2x4()), step=3)
    mesh = spmd.make_mesh((4, 2), ("data", "model"))
    got = checkpoint.restore(str(tmp_path), target_on(mesh, {"w": ("data",), "b": (), "embed": ()}))
    out = spmd.jit(lambda p: (p["w"] * 2).sum(axis=1) + p["b"][:1])(got["params"])
    np.testing.assert_allclose(np.asarray(out), (W * 2).sum(axis=1) + B[:1], rtol=1e-5)


def test_restore_onto_one_device_with_array_targets_and_shardings_argument(tmp_path):
    tree = sharded_tree(mesh_2x4())
    checkpoint.save(str(tmp_path), tree, step=5)
    target = as_numpy(tree)
    got = checkpoint.restore(str(tmp_path), target)
    assert_tree_equal(got, tree)
    mesh = spmd.make_mesh((8,), ("data",))
    replicated = spmd.NamedSharding(mesh, spmd.P())
    again = checkpoint.restore(str(tmp_path), shardings=replicated)
    assert again["params"]["w"].sharding == replicated
    assert_tree_equal(again, tree)


def test_namedtuples_restore_into_a_target_and_as_dicts_without_one(tmp_path):
    State = namedtuple("State", ["count", "weights"])
    tree = State(np.int32(4), {"a": np.arange(3.0)})
    checkpoint.save(str(tmp_path), tree, step=0)
    assert checkpoint.restore(str(tmp_path), State(np.int32(0), {"a": np.zeros(3)})).count == 4
    plain = checkpoint.restore(str(tmp_path))
    assert set(plain) == {"count", "weights"}
    np.testing.assert_array_equal(plain["weights"]["a"], np.arange(3.0))


def test_keep_last_k_and_latest(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save(str(tmp_path), {"x": np.full(3, step)}, step=step, keep=2)
    assert checkpoint.all_steps(str(tmp_path)) == [30, 40]
    assert checkpoint.latest_step(str(tmp_path)) == 40
    np.testing.assert_array_equal(checkpoint.restore(str(tmp_path), step=30)["x"], [30] * 3)
    checkpoint.save(str(tmp_path), {"x": np.full(3, 99)}, step=40, keep=2)  # overwrite a step
    np.testing.assert_array_equal(checkpoint.restore(str(tmp_path))["x"], [99] * 3)
    assert sorted(os.listdir(tmp_path)) == ["LATEST", "step_00000030", "step_00000040"]


def test_a_crash_while_writing_shards_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    tree = sharded_tree(mesh_2x4())
    checkpoint.save(str(tmp_path), tree, step=1)
    real_write = files.write_durably
    calls = []

    def crash_after_three(path, payload):
        calls.append(path)
        if len(calls) > 3:
            raise OSError("disk unplugged")
        real_write(path, payload)

    monkeypatch.setattr(files, "write_durably", crash_after_three)
    with pytest.raises(OSError, match="unplugged"):
        checkpoint.save(str(tmp_path), {"x": np.zeros(2)} | tree, step=2)
    monkeypatch.undo()
    assert checkpoint.latest_step(str(tmp_path)) == 1 and checkpoint.all_steps(str(tmp_path)) == [1]
    assert_tree_equal(checkpoint.restore(str(tmp_path)), tree)


def test_a_crash_before_the_rename_is_ignored_then_cleaned(tmp_path, monkeypatch):
    tree = {"x": np.arange(5.0)}
    checkpoint.save(str(tmp_path), tree, step=1)
    # A killed process leaves its temp folder behind (no exception handler runs).
    leftover = tmp_path / "step_00000002.tmp-0badc0de"
    leftover.mkdir()
    (leftover / "leaf_0000.shard_000.npy").write_bytes(b"partial")
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        checkpoint.save(str(tmp_path), {"x": np.zeros(5)}, step=2)
    monkeypatch.undo()
    assert checkpoint.all_steps(str(tmp_path)) == [1]
    np.testing.assert_array_equal(checkpoint.restore(str(tmp_path))["x"], np.arange(5.0))
    checkpoint.save(str(tmp_path), {"x": np.ones(5)}, step=3)
    assert not leftover.exists()
    assert checkpoint.all_steps(str(tmp_path)) == [1, 3]


class Killed(BaseException):
    """Stands for SIGKILL: no handler of ours runs after it."""


def test_a_kill_at_any_point_of_pruning_never_leaves_a_listed_step_unrestorable(
    tmp_path, monkeypatch
):
    tree = {"a": np.arange(3.0), "b": [np.ones((2, 2), np.int32), np.float32(5)]}
    real_rmtree = checkpoint.shutil.rmtree
    files_per_step = len(os.listdir(checkpoint.save(str(tmp_path / "probe"), tree, step=0)))
    for kill_after in range(files_per_step + 1):  # killed after deleting this many files
        directory = tmp_path / f"run{kill_after}"
        for step in (1, 2):
            checkpoint.save(str(directory), tree, step=step, keep=None)
        deleted = []

        def dying_rmtree(path, ignore_errors=False, limit=kill_after, deleted=deleted):
            # index.json last: the worst case for a pruning that deletes the folder in place
            for name in sorted(os.listdir(path), key=lambda name: name == "index.json"):
                if len(deleted) == limit:
                    raise Killed
                os.remove(os.path.join(path, name))
                deleted.append(name)
            real_rmtree(path)

        monkeypatch.setattr(checkpoint.shutil, "rmtree", dying_rmtree)
        with pytest.raises(Killed):
            checkpoint.save(str(directory), tree, step=3, keep=1)
        monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
        assert checkpoint.all_steps(str(directory)) in ([2, 3], [3])
        for step in checkpoint.all_steps(str(directory)):
            assert_tree_equal(checkpoint.restore(str(directory), step=step), tree)
        checkpoint.save(str(directory), tree, step=4, keep=1)  # cleans what the kill left
        assert sorted(os.listdir(directory)) == ["LATEST", "step_00000004"]


def test_the_next_save_removes_step_folders_without_index_and_latest_temp_files(tmp_path):
    checkpoint.save(str(tmp_path), {"x": np.zeros(2)}, step=1)
    (tmp_path / "step_00000000").mkdir()  # lost its index.json: never listed, never restorable
    (tmp_path / "step_00000000" / "leaf_0000.shard_000.npy").write_bytes(b"old")
    (tmp_path / "LATEST.tmp-1234abcd").write_text("step_00000001")  # a save killed mid-publish
    (tmp_path / "notes.txt").write_text("not ours: kept")
    assert checkpoint.all_steps(str(tmp_path)) == [1]
    checkpoint.save(str(tmp_path), {"x": np.ones(2)}, step=2, keep=None)
    assert sorted(os.listdir(tmp_path)) == ["LATEST", "notes.txt", "step_00000001", "step_00000002"]


def test_latest_falls_back_when_latest_names_a_missing_step(tmp_path):
    checkpoint.save(str(tmp_path), {"x": np.zeros(1)}, step=4)
    (tmp_path / "LATEST").write_text("step_00000009")
    assert checkpoint.latest_step(str(tmp_path)) == 4


def saved(tmp_path):
    checkpoint.save(str(tmp_path), sharded_tree(mesh_2x4()), step=8)
    folder = tmp_path / "step_00000008"
    index = json.loads((folder / "index.json").read_text())
    by_path = {leaf["path"]: leaf for leaf in index["leaves"]}
    return folder, by_path


def test_a_corrupt_shard_is_detected(tmp_path):
    folder, by_path = saved(tmp_path)
    name = by_path["params/w"]["shards"][2]["file"]
    data = bytearray((folder / name).read_bytes())
    data[-1] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"corrupt shard file .*{name}.*params/w"):
        checkpoint.restore(str(tmp_path))


def test_a_missing_or_truncated_shard_is_detected(tmp_path):
    folder, by_path = saved(tmp_path)
    name = by_path["params/b"]["shards"][0]["file"]
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing shard file .*{name}.*params/b"):
        checkpoint.restore(str(tmp_path))
    folder, by_path = saved(tmp_path)  # a fresh copy of step 8
    other = by_path["params/w"]["shards"][0]
    original = (folder / other["file"]).read_bytes()
    for payload, error in (
        (original[:40], "holds only 40 bytes"),  # caught before reading
        (b"\0" * len(original), "unreadable shard file"),
    ):
        (folder / other["file"]).write_bytes(payload)
        index_path = folder / "index.json"
        index = json.loads(index_path.read_text())
        for leaf in index["leaves"]:
            for shard in leaf["shards"]:
                if shard["file"] == other["file"]:
                    shard["sha256"] = files.sha256(payload)  # a consistent hash
        index_path.write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=error):
            checkpoint.restore(str(tmp_path), shardings=None, step=8)


def test_mismatched_targets_are_rejected_with_the_leaf_and_the_difference(tmp_path):
    saved(tmp_path)
    mesh = mesh_2x4()
    good = {"w": ("data",), "b": (), "embed": ()}
    wrong_shape = target_on(mesh, good)
    wrong_shape["params"]["w"] = spmd.ShapeDtypeStruct((12, 9), np.float32)
    with pytest.raises(CheckpointError, match=r"params/w.*float32\[12, 8\].*float32\[12, 9\]"):
        checkpoint.restore(str(tmp_path), wrong_shape)
    wrong_dtype = target_on(mesh, good)
    wrong_dtype["params"]["b"] = spmd.ShapeDtypeStruct((10,), np.float16)
    with pytest.raises(CheckpointError, match=r"params/b.*float16"):
        checkpoint.restore(str(tmp_path), wrong_dtype)
    wrong_tree = target_on(mesh, good)
    wrong_tree["params"]["extra"] = np.zeros(2)
    with pytest.raises(CheckpointError, match="params/extra"):
        checkpoint.restore(str(tmp_path), wrong_tree)


def test_missing_checkpoints_and_steps_raise(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.restore(str(tmp_path / "nothing"))
    checkpoint.save(str(tmp_path), {"x": np.zeros(1)}, step=1)
    with pytest.raises(CheckpointError, match="available steps: \\[1\\]"):
        checkpoint.restore(str(tmp_path), step=2)


def test_no_pickle_files_are_written(tmp_path):
    checkpoint.save(str(tmp_path), sharded_tree(mesh_2x4()), step=1)
    for name in os.listdir(tmp_path / "step_00000001"):
        if name.endswith(".npy"):
            np.load(tmp_path / "step_00000001" / name, allow_pickle=False)


def test_bfloat16_round_trip_is_bit_exact_sharded(tmp_path):
    mesh = mesh_2x4()
    values = np.array(
        [1.0, -0.0, np.inf, 3.140625, 1e-30, np.nan, 65280.0, -2.5], ml_dtypes.bfloat16
    )
    x = spmd.device_put(values, spmd.NamedSharding(mesh, spmd.P("model")))
    checkpoint.save(str(tmp_path), {"x": x}, step=0)
    got = checkpoint.restore(
        str(tmp_path),
        {
            "x": spmd.ShapeDtypeStruct(
                (8,),
                "bfloat16",
                spmd.NamedSharding(spmd.make_mesh((8,), ("data",)), spmd.P("data")),
            )
        },
    )
    assert got["x"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(got["x"]).view(np.uint16), values.view(np.uint16))


def test_a_zero1_training_state_resumes_identically(tmp_path):
    import spmd.numpy as snp
    from spmd import optim

    mesh = spmd.make_mesh((8,), ("data",))
    opt = optim.adamw(1e-2, weight_decay=0.1, shard_state_over="data", mesh=mesh)
    replicated = spmd.NamedSharding(mesh, spmd.P())
    params = {"w": spmd.device_put(W, replicated)}
    x = spmd.device_put(
        RNG.standard_normal((16, 12)).astype(np.float32), spmd.NamedSharding(mesh, spmd.P("data"))
    )

    @spmd.jit
    def step(params, state):
        grads = spmd.grad(lambda p: snp.mean(snp.square(x @ p["w"])))(params)
        return opt.update(grads, state, params)

    state = opt.init(params)
    for _ in range(2):
        params, state = step(params, state)
    checkpoint.save(str(tmp_path), {"params": params, "opt": state}, step=2)
    restored = checkpoint.restore(str(tmp_path), {"params": params, "opt": state})
    assert restored["opt"]["mu"]["w"].sharding == state["mu"]["w"].sharding
    assert_tree_equal(restored, {"params": params, "opt": state})
    for _ in range(2):
        params, state = step(params, state)
    again, again_state = restored["params"], restored["opt"]
    for _ in range(2):
        again, again_state = step(again, again_state)
    assert_tree_equal(again, params)
