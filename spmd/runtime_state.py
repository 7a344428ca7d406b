"""The API's one piece of global state: which runtime runs sharded programs, and its devices.

spmd.distributed installs a multi-process runtime (mpi, tcp, ray) with set_runtime; with none
installed, the embedded runtime of launch/local.py runs them. `runtime_api()` is the API's one
door to launch.runtime (the runtimes, and through them the backend registry): imported when
first used, so importing the API loads no backend.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

_STATE: dict[str, Any] = {"runtime": None, "devices": None}


def current_runtime() -> Any:
    """The installed multi-process runtime (a launch.runtime.Runtime), or None (the embedded)."""
    return _STATE["runtime"]


def set_runtime(runtime: Any) -> None:
    """Routes sharded execution and arrays through runtime (None: back to the local one)."""
    _STATE["runtime"] = runtime
    _STATE["devices"] = None if runtime is None else runtime.devices()


def runtime() -> Any:
    """The runtime that runs sharded programs: the installed one, else the embedded one."""
    installed = _STATE["runtime"]
    return installed if installed is not None else runtime_api().local_runtime()


def known_devices() -> list[Any] | None:
    """The devices spmd.mesh.devices() found or the installed runtime gave (None: not yet)."""
    return _STATE["devices"]


def remember_devices(found: list[Any]) -> list[Any]:
    _STATE["devices"] = found
    return found


def check_device(device_kind: str) -> None:
    """LaunchError unless this machine can run device_kind (the backend registry's answer)."""
    runtime_api().check_device(device_kind)


def runtime_api() -> ModuleType:
    """launch.runtime: the runtimes, the API's door to the backend registry, global arrays."""
    import launch.runtime  # the API's only way down to launch (docs/architecture.md)

    return launch.runtime


def simulator() -> ModuleType:
    """launch.simulate: the TPU simulator's entry points, as the runtime layer offers them."""
    import launch.simulate

    return launch.simulate
