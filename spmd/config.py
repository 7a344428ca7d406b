"""spmd.config: every setting of spmd, the SPMD_* environment variables and JAX's config.

    spmd.config.update("jax_enable_x64", False)     # JAX-style global settings
    config.env("SPMD_BACKEND")                        # a variable, parsed and checked

`VARIABLES` is the one table of the SPMD_* variables (docs/config.md shows it, a test keeps
the two equal); no other module reads one from os.environ. Variables are read when used, not
cached, so a variable set before a compile (or monkeypatched by a test) takes effect.

jax_enable_x64 (alias x64): 64-bit dtypes allowed. Off by default, as in JAX (float64 numpy
inputs become float32, int64 int32); SPMD_ENABLE_X64=1, update("jax_enable_x64", True) or
`with spmd.enable_x64():` turns it on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from spmd.errors import ConfigError

X64_DEFAULT = False  # SPMD_ENABLE_X64's default, JAX's: 32-bit dtypes


@dataclass(frozen=True)
class Variable:
    """One SPMD_* variable: kind is flag (0/1), int, seconds, choice, text or paths
    (os.pathsep-separated); an unset or empty variable has its default."""

    name: str
    kind: str
    default: Any
    meaning: str
    choices: tuple[str, ...] = ()
    minimum: int = 1


VARIABLES = {
    v.name: v
    for v in (
        Variable(
            "SPMD_ENABLE_X64",
            "flag",
            X64_DEFAULT,
            "64-bit dtypes allowed (JAX's jax_enable_x64), read when spmd.config is first "
            "imported; 0: float64 inputs become float32",
        ),
        Variable(
            "SPMD_NUM_DEVICES",
            "int",
            8,
            "logical devices of the local runtime (read once, at its first use)",
        ),
        Variable(
            "SPMD_BACKEND",
            "choice",
            "auto",
            "backend for host meshes: auto (native code for big programs, else the numpy "
            "reference), cpu or interpreter",
            ("auto", "cpu", "interpreter"),
        ),
        Variable(
            "SPMD_LOCAL_MODE",
            "choice",
            "",
            "how the local runtime runs a sharded program; unset: chosen by the backend",
            ("", "stacked", "lockstep", "threads"),
        ),
        Variable(
            "SPMD_VERIFY",
            "flag",
            False,
            "run the IR verifier after every pass and partitioner step",
        ),
        Variable(
            "SPMD_CPU_THREADS",
            "int",
            None,
            "kernel threads of the cpu backend; unset: OMP_NUM_THREADS, else every core",
        ),
        Variable(
            "SPMD_NATIVE_GEMM",
            "flag",
            True,
            "0: every dot on the BLAS (no generated GEMM kernels; to compare against)",
        ),
        Variable(
            "SPMD_MALLOC_TUNING", "flag", True, "0: leave glibc malloc's thresholds as they are"
        ),
        Variable(
            "SPMD_CACHE_DIR", "text", "~/.cache/spmd/cpu", "the cpu backend's compiled-kernel cache"
        ),
        Variable(
            "SPMD_CONFIG_PATH",
            "paths",
            (),
            "directories searched for chips/*.toml and meshes.toml before configs/",
        ),
        Variable(
            "SPMD_COLLECTIVE_TIMEOUT",
            "seconds",
            300.0,
            "how long a collective may wait; 0 or less: forever",
        ),
        Variable(
            "SPMD_RENDEZVOUS_TIMEOUT",
            "seconds",
            60.0,
            "how long tcp ranks wait for each other at start",
        ),
        Variable(
            "SPMD_RUNTIME",
            "choice",
            "",
            "runtime of spmd.distributed.initialize(); unset: mpi under mpiexec, tcp under "
            "torchrun-style variables, else local",
            ("", "local", "mpi", "tcp", "ray"),
        ),
        Variable(
            "SPMD_RAY_CHANNEL",
            "choice",
            "sockets",
            "how Ray actors exchange collective data (sockets beat the object store at "
            "every size measured: benchmarks/RESULTS.md)",
            ("sockets", "objects"),
        ),
        Variable(
            "SPMD_BIND_ADDR",
            "text",
            "",
            "address this host's sockets listen on; unset: the one routing to the peers",
        ),
        Variable(
            "SPMD_JOB_SECRET",
            "text",
            "",
            "per-job secret every process of a multi-process job shares (spmd-launch sets it)",
        ),
        Variable("SPMD_WIRE_MAC", "flag", False, "1: a MAC on every collective message too"),
        Variable("SPMD_MESH", "text", "", "mesh shape given by spmd-launch, e.g. 2x4"),
        Variable("SPMD_AXES", "text", "", "mesh axis names given by spmd-launch, e.g. data,model"),
        Variable("SPMD_DEVICE", "text", "cpu", "device kind given by spmd-launch"),
        Variable("SPMD_SIMULATE", "flag", False, "set by spmd-launch --simulate"),
        Variable(
            "SPMD_RESTART",
            "int",
            0,
            "set by spmd-launch --max-restarts: which restart of the job this is",
            minimum=0,
        ),
        Variable(
            "SPMD_LAUNCHER_PID",
            "int",
            None,
            "set by spmd-launch: its pid; a child ends when the launcher is gone",
        ),
    )
}

_FLAGS = {"": None, "0": False, "1": True}


def env(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of SPMD variable `name` (in os.environ, or `environ`), parsed; its default
    when unset or empty; ConfigError when the value is not one it can take."""
    var = VARIABLES[name]
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if raw == "":
        return var.default
    if var.kind == "flag":
        if raw not in _FLAGS:
            raise _bad(var, raw, "0 or 1")
        return _FLAGS[raw]
    if var.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not var.minimum <= value <= 1 << 31:
            raise _bad(var, raw, f"an integer from {var.minimum}")
        return value
    if var.kind == "seconds":
        try:
            return float(raw)
        except ValueError:
            raise _bad(var, raw, "a number of seconds") from None
    if var.kind == "choice" and raw not in var.choices:
        raise _bad(var, raw, "one of " + ", ".join(c for c in var.choices if c))
    if var.kind == "paths":
        return tuple(p for p in raw.split(os.pathsep) if p)
    return raw


def _bad(var: Variable, raw: str, want: str) -> ConfigError:
    return ConfigError(
        f"{var.name}={raw!r}: must be {want}",
        loc="environment",
        hint=f"unset {var.name} (default {var.default!r}), or give {want}",
    )


def check_environment() -> None:
    """Every SPMD_* variable that is set holds a value it can take (checked before any work)."""
    for name in VARIABLES:
        env(name)


# -- JAX's config ----------------------------------------------------------------------------

# Read by spmd.dtypes on every canonicalization (one dict, shared): 64-bit dtypes allowed.
X64 = {"enabled": env("SPMD_ENABLE_X64")}
_ALIASES = {"jax_enable_x64": "jax_enable_x64", "x64": "jax_enable_x64"}


def update(name: str, value: Any) -> None:
    """Set one setting; an unknown name or a non-bool value is an error."""
    _key(name)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    X64["enabled"] = value


def read(name: str) -> Any:
    _key(name)
    return X64["enabled"]


@contextlib.contextmanager
def enable_x64(enabled: bool = True) -> Iterator[None]:
    """`with spmd.enable_x64():` 64-bit dtypes inside the block, restored after (JAX's
    `jax.enable_x64(True)`)."""
    before = X64["enabled"]
    update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        X64["enabled"] = before


def _key(name: str) -> str:
    key = _ALIASES.get(name)
    if key is None:
        raise ConfigError(f"unknown setting {name!r}", hint=f"spmd.config knows {sorted(_ALIASES)}")
    return key


def __getattr__(name: str) -> Any:
    """spmd.config.jax_enable_x64 / .x64, read as attributes as in JAX."""
    if name in _ALIASES:
        return X64["enabled"]
    raise AttributeError(f"module 'spmd.config' has no attribute {name!r}")
