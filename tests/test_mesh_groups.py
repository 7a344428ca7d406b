"""Mesh-group arithmetic (spmd/mesh_groups.py, the one home the partitioner, collectives, backends
and device batching use) against groupings derived by hand on a 2x2x2 mesh.

Device d has coordinates (a, b, c) with d = 4a + 2b + c. A group over `axes` is the devices
that agree on the other axes; its order is row-major over `axes` as given (major first).
"""

from __future__ import annotations

import pytest

from collectives import NullCommunicator
from partitioner import layout
from partitioner.spec import MeshShape
from spmd import mesh
from spmd.errors import MeshError

NAMES = ("a", "b", "c")
SHAPE = (2, 2, 2)

HAND = {
    (): [[0], [1], [2], [3], [4], [5], [6], [7]],
    ("a",): [[0, 4], [1, 5], [2, 6], [3, 7]],  # (b, c) = 00, 01, 10, 11
    ("c",): [[0, 1], [2, 3], [4, 5], [6, 7]],
    ("b", "c"): [[0, 1, 2, 3], [4, 5, 6, 7]],
    ("c", "a"): [[0, 4, 1, 5], [2, 6, 3, 7]],  # index 2c + a, one group per b
    ("a", "c"): [[0, 1, 4, 5], [2, 3, 6, 7]],  # index 2a + c
    ("a", "b", "c"): [[0, 1, 2, 3, 4, 5, 6, 7]],
    ("c", "b", "a"): [[0, 4, 2, 6, 1, 5, 3, 7]],  # index 4c + 2b + a
}


@pytest.mark.parametrize("axes", list(HAND), ids=lambda a: "".join(a) or "none")
def test_groups_match_hand_derivation(axes: tuple[str, ...]) -> None:
    groups = HAND[axes]
    assert mesh.axis_groups(NAMES, SHAPE, axes) == groups
    spec_mesh = MeshShape(NAMES, SHAPE)
    coords = layout.device_coords(spec_mesh)
    for key, members in enumerate(groups):
        for index, rank in enumerate(members):
            assert mesh.group_members(rank, SHAPE, NAMES, axes) == members
            assert mesh.group_index(rank, SHAPE, NAMES, axes) == index
            assert mesh.group_key(rank, SHAPE, NAMES, axes) == key
            assert mesh.group_size(SHAPE, NAMES, axes) == len(members)
            assert layout.group_index(coords[rank], axes, spec_mesh) == index
            assert NullCommunicator(rank, SHAPE, NAMES).group_members(axes) == members


def test_coordinates_are_row_major() -> None:
    coords = mesh.device_coords(NAMES, SHAPE)
    assert coords[5] == {"a": 1, "b": 0, "c": 1}
    assert [mesh.mesh_coords(d, SHAPE) for d in (0, 3, 6)] == [(0, 0, 0), (0, 1, 1), (1, 1, 0)]


def test_axes_are_checked() -> None:
    assert mesh.check_axes("b", NAMES) == ("b",)
    with pytest.raises(MeshError, match="unknown mesh axis"):
        mesh.axis_groups(NAMES, SHAPE, ("d",))
    with pytest.raises(MeshError, match="used twice"):
        mesh.group_index(0, SHAPE, NAMES, ("a", "a"))
