"""Lockstep reference execution of a per-device program on every device of a mesh.

Each op runs for all devices before the next; a collective becomes its group reference
over each group of devices. The oracle for shard_map and the partitioner's output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from spmd import dtypes
from spmd.interpreter import run_reference
from spmd.ir.graph import Graph, Op
from spmd.ir.opdef import REGISTRY
from spmd.mesh import axis_groups


def run_collective_lockstep(
    op: Op,
    per_device: list[list[np.ndarray]],
    axis_names: Sequence[str],
    mesh_shape: Sequence[int],
) -> list[list[np.ndarray]]:
    """One collective op on every device at once; returns per-device outputs."""
    group_ref = REGISTRY[op.name].extra["group_reference"]
    n = math.prod(mesh_shape)
    out: list[list[np.ndarray]] = [[] for _ in range(n)]
    for members in axis_groups(axis_names, mesh_shape, op.attrs["axes"]):
        xs = [per_device[m][0] if per_device[m] else None for m in members]
        results = group_ref(xs, **op.attrs)
        for m, r in zip(members, results):
            out[m] = [np.asarray(r)]
    return out


def evaluate_spmd(
    graph: Graph,
    args: Sequence[Sequence[np.ndarray]],
    axis_names: Sequence[str],
    mesh_shape: Sequence[int],
) -> list[list[np.ndarray]]:
    """Run `graph` on every device; args[d] are device d's inputs. Returns outputs per device."""
    n = math.prod(mesh_shape)
    envs: list[dict[int, np.ndarray]] = [dict(zip(graph.params, a)) for a in args]
    for op in graph.ops:
        if "group_reference" in REGISTRY[op.name].extra:
            inputs = [[env[v] for v in op.inputs] for env in envs]
            outs = run_collective_lockstep(op, inputs, axis_names, mesh_shape)
            for env, o in zip(envs, outs):
                env[op.outputs[0]] = o[0].astype(dtypes.to_numpy(op.types[0].dtype), copy=False)
            continue
        for d in range(n):
            env = envs[d]
            for vid, value in zip(op.outputs, run_reference(op, [env[v] for v in op.inputs])):
                env[vid] = value
    return [[env[v] for v in graph.results] for env in envs]
