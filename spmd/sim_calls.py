"""What a compiled program's call does under the TPU simulator: spmd.sim's state (abstract
mode, first_step's record of programs) and `on_call`, which spmd.executables asks on every
call. Below spmd.executables and spmd.api; spmd.sim, the user's API, drives the state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spmd.shape_dtype import ShapeDtypeStruct
from spmd.tracing import user_loc


@dataclass
class SimState:
    """abstract() depth and simulator options, the last report, the time accrued, and the
    programs first_step() records (None outside it)."""

    depth: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    last: Any = None
    elapsed_s: float = 0.0
    steps: int = 0
    programs: dict[int, SimulatedProgram] | None = None  # set inside first_step()


@dataclass
class SimulatedProgram:
    """A program simulated under `first_step()`: its report and the user line that called it."""

    report: Any
    loc: str
    calls: int = 1
    executable: Any = field(default=None, repr=False)


class SimulationDone(BaseException):
    """Raised under `first_step()` when the script reads a simulated value: its step is done."""

    def __init__(self, loc: str | None):
        self.loc = loc
        super().__init__(f"the script read a simulated value at {loc or '?'}")


class SimulatedValue(ShapeDtypeStruct):
    """A jitted result under `first_step()`: shape, dtype and sharding only.

    Jitted functions take it like any array; reading it or eager math on it (float(),
    np.asarray, print, `x + 1` outside jit) raises SimulationDone.
    """

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.aval.size

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        from spmd.errors import describe_loc

        raise SimulationDone(describe_loc())

    __array__ = __float__ = __int__ = __index__ = __bool__ = __complex__ = _read
    item = tolist = __str__ = __format__ = __len__ = __iter__ = __getitem__ = _read
    __neg__ = __pos__ = __abs__ = __round__ = __lt__ = __le__ = __gt__ = __ge__ = _read


for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "matmul",
    "and",
    "or",
    "xor",
):
    setattr(SimulatedValue, f"__{_name}__", SimulatedValue._read)
    setattr(SimulatedValue, f"__r{_name}__", SimulatedValue._read)
STATE = SimState()  # the one simulator state of this process (spmd.sim changes it)


def record(executable: Any, report: Any) -> None:
    """Count a simulated call under `first_step()` (a new program keeps the caller's line)."""
    programs = STATE.programs
    if programs is None:
        return
    entry = programs.get(id(executable))
    if entry is not None and entry.executable is executable:
        entry.calls += 1
        return
    programs[id(executable)] = SimulatedProgram(report, user_loc() or "?", 1, executable)


def on_call(executable: Any, args: Sequence[Any]) -> list[Any] | None:
    """Called by the dispatcher on every call of a compiled program.

    Abstract calls (ShapeDtypeStruct args, or inside `abstract()`) return ShapeDtypeStructs
    and allocate nothing; real calls on a tpu-sim mesh run normally while the simulated time
    accrues (the report is cached per program: cost does not depend on the data).
    """
    mesh = getattr(executable, "mesh", None)
    on_tpu_sim = mesh is not None and str(mesh.device_kind).startswith("tpu-sim")
    is_abstract = (
        STATE.depth > 0
        or any(isinstance(a, ShapeDtypeStruct) for a in args)
        or (on_tpu_sim and STATE.programs is not None)
    )
    if not is_abstract and not on_tpu_sim:
        return None
    report = executable.simulate(**STATE.options)
    STATE.last = report
    STATE.elapsed_s += report.step_time_s
    STATE.steps += 1
    record(executable, report)
    if not is_abstract:
        return None
    shardings = getattr(executable, "out_shardings", None) or [None] * len(executable.graph.results)
    kind = ShapeDtypeStruct if STATE.programs is None else SimulatedValue
    return [
        kind(t.shape, t.dtype, s, t.weak) for t, s in zip(executable.graph.result_types, shardings)
    ]
