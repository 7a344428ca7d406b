"""spmd.data.DataLoader: deterministic epochs, full coverage, per-process slices, exact resume,
and batches sharded over the data axis."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
from spmd import P
from spmd.data import DataLoader
from spmd.errors import CheckpointError, ShapeError

N = 50


def data() -> dict[str, np.ndarray]:
    return {
        "x": np.arange(N * 3, dtype=np.float32).reshape(N, 3),
        "y": np.arange(N, dtype=np.int32),
    }


def rows(batches: list) -> list[list[int]]:
    return [np.asarray(b["y"]).tolist() for b in batches]


def test_same_seed_gives_same_order_and_epochs_differ():
    first = rows(list(DataLoader(data(), 8, seed=3)))
    second = rows(list(DataLoader(data(), 8, seed=3)))
    assert first == second
    loader = DataLoader(data(), 8, seed=3)
    list(loader)
    assert rows(list(loader)) != first
    assert rows(list(DataLoader(data(), 8, seed=4))) != first


def test_epoch_order_is_numpy_generator_seeded_by_seed_and_epoch():
    loader = DataLoader(data(), 10, seed=7)
    list(loader)
    expected = np.random.default_rng((7, 1)).permutation(N).reshape(5, 10).tolist()
    assert rows(list(loader)) == expected


def test_epoch_covers_every_example_once_and_rows_stay_together():
    loader = DataLoader(data(), 7, drop_last=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    seen = np.concatenate([np.asarray(b["y"]) for b in batches])
    assert sorted(seen.tolist()) == list(range(N))
    for b in batches:
        np.testing.assert_array_equal(np.asarray(b["x"]), data()["x"][np.asarray(b["y"])])


def test_drop_last_drops_the_partial_batch():
    loader = DataLoader(data(), 7)
    assert len(loader) == 7
    assert all(len(b) == 7 for b in rows(list(loader)))


def test_tuple_input_yields_tuples():
    x, y = data()["x"], data()["y"]
    batch = next(iter(DataLoader((x, y), 5, shuffle=False)))
    assert isinstance(batch, tuple)
    np.testing.assert_array_equal(np.asarray(batch[0]), x[:5])
    np.testing.assert_array_equal(np.asarray(batch[1]), y[:5])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_process_slices_partition_the_global_batch(count):
    loaders = [
        DataLoader(data(), 8, seed=1, process_index=i, process_count=count) for i in range(count)
    ]
    for step in range(len(loaders[0])):
        pieces = [loader.local_indices(0, step) for loader in loaders]
        assert {len(p) for p in pieces} == {8 // count}
        np.testing.assert_array_equal(np.concatenate(pieces), loaders[0].batch_indices(0, step))


def test_resume_from_state_dict_equals_the_uninterrupted_sequence():
    reference = DataLoader(data(), 8, seed=2)
    stream = reference.forever()
    expected = [rows([next(stream)])[0] for _ in range(15)]

    first = DataLoader(data(), 8, seed=2)
    stream = first.forever()
    got = [rows([next(stream)])[0] for _ in range(9)]
    state = dict(first.state_dict())
    assert state["epoch"] == 1 and state["step"] == 3
    resumed = DataLoader(data(), 8, seed=2)
    resumed.load_state_dict(state)
    stream = resumed.forever()
    got += [rows([next(stream)])[0] for _ in range(6)]
    assert got == expected


def test_state_from_another_loader_is_refused():
    state = DataLoader(data(), 8, seed=2).state_dict()
    with pytest.raises(CheckpointError, match="seed"):
        DataLoader(data(), 8, seed=5).load_state_dict(state)
    with pytest.raises(CheckpointError, match="batch_size"):
        DataLoader(data(), 10, seed=2).load_state_dict(state)


@pytest.mark.parametrize("shape,axis", [((2, 4), "data"), ((8,), "data"), ((4, 2), "data")])
def test_batches_are_sharded_over_the_data_axis(shape, axis):
    mesh = spmd.make_mesh(shape, ("data", "model")[: len(shape)])
    loader = DataLoader(data(), 8, mesh=mesh, batch_axis=axis, seed=0)
    batch = next(iter(loader))
    assert batch["x"].sharding == spmd.NamedSharding(mesh, P(axis, None))
    assert batch["y"].sharding == spmd.NamedSharding(mesh, P(axis))
    indices = loader.batch_indices(0, 0)
    np.testing.assert_array_equal(np.asarray(batch["x"]), data()["x"][indices])
    per_device = 8 // shape[0]
    for shard in batch["y"].addressable_shards:
        start = shard.index[0].start
        np.testing.assert_array_equal(shard.data, indices[start : start + per_device])
        assert shard.data.shape == (per_device,)


def test_mesh_of_a_with_block_is_used():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    with mesh:
        loader = DataLoader(data(), 8)
    assert next(iter(loader))["y"].sharding == spmd.NamedSharding(mesh, P("data"))


def test_bad_inputs_raise_shape_errors():
    with pytest.raises(ShapeError, match="leading length"):
        DataLoader({"x": np.zeros(4), "y": np.zeros(5)}, 2)
    with pytest.raises(ShapeError, match="batch_size"):
        DataLoader(data(), 0)
    with pytest.raises(ShapeError, match="does not split"):
        DataLoader(data(), 9, process_index=0, process_count=2)
