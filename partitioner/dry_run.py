"""What a plan costs, measured by running it on a scratch program: the bytes per device its
collectives move (DESIGN.md's table). Imports only the builder, so the planners can price
their own alternatives with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from partitioner.builder import ProgramBuilder
from partitioner.spec import MeshShape
from spmd.ir.types import TensorType

Plan = Callable[[ProgramBuilder, int], object]


def plan_moved(mesh: MeshShape, local: TensorType, plan: Plan) -> float:
    """Bytes per device that `plan(builder, x)` moves, x being a value of type `local`."""
    b = ProgramBuilder(mesh)
    x = b.param(local)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan(b, x)
    return sum(r.moved for r in b.records)
