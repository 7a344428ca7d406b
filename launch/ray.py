"""The Ray runtime (single controller): the script runs once; one actor per device holds that
device's shards; the controller sends each per-device program once, each actor compiles it
with its device's backend (backends.registry; the kernel cache on disk makes the second
actor's compile free), and then only buffer handles travel per step, never the data.
Collectives between actors: collectives.ray (host), collectives.nccl (gpu), called from
inside the compiled program.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from backends import registry
from collectives import auth
from launch import ray_blame
from launch.ray_actor import DeviceActor, MeshKey
from spmd import config
from spmd.errors import LaunchError, RemoteError
from spmd.mesh import Device, Mesh

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
ABORT_WAIT_S = 5.0  # after a failure, how long the other actors get to notice the abort


class RemoteShard:
    """A buffer held by an actor; freed there when the controller drops the last reference."""

    __slots__ = ("__weakref__", "actor", "handle", "runtime")

    def __init__(self, runtime: RayRuntime, actor: int, handle: int):
        self.runtime = runtime
        self.actor = actor
        self.handle = handle

    def __del__(self) -> None:
        self.runtime.garbage.append((self.actor, self.handle))


class RayRuntime:
    """One Ray actor per device, placed by a placement group; this process is the controller."""

    kind = "ray"

    def __init__(
        self,
        num_devices: int = 8,
        address: str | None = None,
        platform: str = "cpu",
        channel: str | None = None,
    ):
        self.channel = channel or config.env("SPMD_RAY_CHANNEL")
        self.secret = auth.job_secret() or auth.new_secret().encode()  # actors' sockets' secret
        if self.channel not in ("sockets", "objects"):
            raise LaunchError(f"SPMD_RAY_CHANNEL={self.channel!r}: use 'sockets' or 'objects'")
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            init_ray(address, num_devices)
        self._devices = [Device(i, platform) for i in range(num_devices)]
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        strategy = "SPREAD" if len(nodes) > 1 else "PACK"
        gpus = 1 if platform == "gpu" else 0  # a GPU device's actor holds one GPU
        if gpus and ray.cluster_resources().get("GPU", 0) < num_devices:
            found = ray.cluster_resources().get("GPU", 0)
            raise LaunchError(
                f"--device gpu needs {num_devices} GPUs but the Ray cluster has {found:g}",
                hint="run on a cluster with a GPU per device, or use --device cpu",
            )
        bundle = {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1}
        self.group = placement_group([bundle] * num_devices, strategy=strategy)
        ray.get(self.group.ready(), timeout=START_TIMEOUT_S)
        self.actors = [
            DeviceActor.options(
                num_cpus=1,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, i),
            ).remote(i, self.channel, self.secret)
            for i in range(num_devices)
        ]
        addresses = ray.get([a.address.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        self.actor_info = [(host, pid) for (host, _), pid in zip(addresses, self.pids())]
        ray.get([a.connect.remote(self.actors, addresses) for a in self.actors])
        self._handles = itertools.count()
        self._programs: dict[int, tuple[Any, str]] = {}
        self.garbage: list[tuple[int, int]] = []

    # -- processes and devices -------------------------------------------------------------
    def process_index(self) -> int:
        return 0

    def process_count(self) -> int:
        return 1

    def devices(self) -> list[Device]:
        return list(self._devices)

    def local_devices(self) -> list[Device]:
        return list(self._devices)

    def barrier(self) -> None:
        return None

    def run_on_devices(
        self,
        function: Any,
        mesh_shape: Sequence[int],
        axis_names: Sequence[str],
        channel: str | None = None,
    ) -> list[Any]:
        """function(communicator) on every actor of a mesh over the first devices, like
        collectives.local.run_on_devices; channel 'sockets' or 'objects' (default: ours)."""
        count = int(np.prod(mesh_shape))
        mesh_key = (tuple(mesh_shape), tuple(axis_names), tuple(range(count)))
        refs = [self.actors[i].call.remote(function, mesh_key, channel) for i in range(count)]
        return self._wait(refs, list(range(count)))

    def pids(self) -> list[int]:
        """The actors' process ids (for tests and monitoring)."""
        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        remove_placement_group(self.group)
        if self.owns_ray:
            ray.shutdown()

    # -- shards ----------------------------------------------------------------------------
    def put(self, shards: Sequence[Any], mesh: Mesh) -> list[Any]:
        """Sends each numpy shard to its device's actor (once); handles pass through."""
        out = []
        for shard, device in zip(shards, mesh.devices.flat):
            if isinstance(shard, RemoteShard) or shard is None:
                out.append(shard)
                continue
            handle = next(self._handles)
            self.actors[device.id].store.remote(handle, shard)
            out.append(RemoteShard(self, device.id, handle))
        return out

    def fetch(self, shards: Sequence[Any], mesh: Mesh) -> list[np.ndarray | None]:
        refs = [
            self.actors[s.actor].fetch.remote([s.handle]) if isinstance(s, RemoteShard) else None
            for s in shards
        ]
        pending = [r for r in refs if r is not None]
        values = iter(self._wait(pending, [s.actor for s in shards if isinstance(s, RemoteShard)]))
        return [next(values)[0] if r is not None else s for r, s in zip(refs, shards)]

    def compile(self, partitioned: Any, mesh: Mesh) -> RayProgram:
        """Sends the per-device program to the actors once; each compiles it on its first run
        with the backend the registry picks here, for the mesh's device kind."""
        program = partitioned.program
        key = self._load(program)
        actors = tuple(int(i) for i in mesh.device_ids)
        mesh_key = (tuple(mesh.axis_sizes), tuple(mesh.axis_names), actors)
        backend = registry.choose(str(mesh.device_kind), program, copies=mesh.size)
        return RayProgram(self, key, mesh_key, backend, len(program.results))

    def run(
        self,
        partitioned: Any,
        mesh: Mesh,
        per_device: Sequence[Sequence[Any]],
    ) -> list[list[Any]]:
        """Each device's actor runs the per-device program; results stay in the actors."""
        return self.compile(partitioned, mesh).run(per_device)

    def _run(
        self,
        program: RayProgram,
        per_device: Sequence[Sequence[Any]],
    ) -> list[list[Any]]:
        actors = program.mesh[2]
        # the buffers dropped since the last step are freed by the step's own call (one call
        # per actor per step, not two)
        dropped = self._collect_garbage(keep=set(actors))
        refs, results = [], []
        for actor, args in zip(actors, per_device):
            handles = [a.handle if isinstance(a, RemoteShard) else a for a in args]
            outs = [next(self._handles) for _ in range(program.results)]
            refs.append(
                self.actors[actor].run.remote(
                    program.key,
                    program.mesh,
                    handles,
                    outs,
                    program.backend,
                    dropped.get(actor, []),
                )
            )
            results.append([RemoteShard(self, actor, h) for h in outs])
        self._wait(refs, list(actors))
        return results

    def _load(self, program: Any) -> str:
        """The program's key; sends it to every actor the first time."""
        found = self._programs.get(id(program))
        if found is not None:
            return found[1]
        from spmd.ir.printer import print_graph

        key = hashlib.sha256(print_graph(program).encode()).hexdigest()[:16]
        self._wait(
            [a.load.remote(key, program) for a in self.actors], list(range(len(self.actors)))
        )
        self._programs[id(program)] = (program, key)
        return key

    def _collect_garbage(self, keep: set[int] | None = None) -> dict[int, list[int]]:
        """Frees the buffers dropped since the last call on their actors, except those of the
        actors in keep: returned by actor, for the caller to send along."""
        dropped, self.garbage = self.garbage, []
        by_actor: dict[int, list[int]] = {}
        for actor, handle in dropped:
            by_actor.setdefault(actor, []).append(handle)
        for actor, handles in by_actor.items():
            if actor < len(self.actors) and actor not in (keep or ()):
                self.actors[actor].free.remote(handles)
        return by_actor

    def _wait(self, refs: list[Any], devices: list[int]) -> list[Any]:
        """Results of refs; on the first failure every actor is told to stop waiting."""
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            try:
                ray.get(done[0])
            except (ray.exceptions.RayError, RemoteError) as exc:
                failures = [(devices[refs.index(done[0])], exc)]
                if ray_blame.consequence(exc):  # what caused it may be a moment behind
                    failures, remaining = ray_blame.gather(failures[0], remaining, refs, devices)
                message = ray_blame.blame(
                    failures, [devices[refs.index(r)] for r in remaining], self.actor_info
                )
                for actor in self.actors:
                    actor.abort.remote(message)
                ray.wait(remaining, num_returns=len(remaining), timeout=ABORT_WAIT_S)
                for actor in self.actors:
                    actor.reset.remote()
                raise RemoteError(message) from None
        return ray.get(refs)


class RayProgram:
    """A per-device program loaded into a mesh's actors (Runtime.compile's result)."""

    def __init__(self, runtime: RayRuntime, key: str, mesh: MeshKey, backend: str, results: int):
        self.runtime = runtime
        self.key = key
        self.mesh = mesh
        self.backend = backend  # the registry's kind the actors compile with
        self.results = results

    def run(self, per_device: Sequence[Sequence[Any]]) -> list[list[Any]]:
        return self.runtime._run(self, per_device)


def init_ray(address: str | None, num_devices: int) -> None:
    """A local Ray (num_cpus may exceed the cores; no dashboard) or the cluster at address."""
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "configure_logging": False,
    }
    # Workers inherit this environment (a runtime_env would start a second, slower worker pool):
    # our packages on the path, one BLAS thread per actor.
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **options)
        return
    # A local Ray is a one-host job: the actors' sockets listen on loopback (they inherit this).
    os.environ.setdefault("SPMD_BIND_ADDR", "127.0.0.1")
    # address="local": a new Ray of our own. ray.init() alone joins any Ray it finds running on
    # this machine (by its processes, or /tmp/ray/ray_current_cluster), someone else's too.
    ray.init(address="local", num_cpus=max(num_devices, os.cpu_count() or 1), **options)
