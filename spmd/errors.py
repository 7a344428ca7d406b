"""Every error a user can cause, one class per mistake. Imports nothing of ours.

A message has three parts: the problem with the actual values, where it happened
(the user's file:line), and what to do about it.
"""

from __future__ import annotations

import linecache
import os
import sys
import threading

# Frames from these folders are ours; a user's location is the first frame outside them.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERNAL_DIRS: list[str] = [
    os.path.join(_ROOT, pkg) + os.sep
    for pkg in ("spmd", "partitioner", "collectives", "backends", "launch")
]
INTERNAL_DIRS.append(os.path.dirname(threading.__file__) + os.sep)  # stdlib (functools, ...)


def user_frame() -> tuple[str, int, str] | None:
    """(file, line, function) of the innermost frame outside our packages."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(tuple(INTERNAL_DIRS)) and not filename.startswith("<frozen"):
            return filename, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back
    return None


def describe_loc() -> str | None:
    """The user's location with function and source text, for error messages."""
    found = user_frame()
    if found is None:
        return None
    filename, line, func = found
    text = linecache.getline(filename, line).strip()
    return f"{os.path.basename(filename)}:{line} in {func}:   {text}"


# The error reference in the repository, one section per class (tests check both exist).
DOCS = "docs/errors.md"


class SpmdError(Exception):
    """Base of every spmd error."""

    def __init__(self, problem: str, loc: str | None = None, hint: str | None = None):
        self.problem = problem
        self.loc = loc if loc is not None else describe_loc()
        self.hint = hint
        parts = [problem]
        if self.loc:
            parts.append(f"  at {self.loc}")
        if hint:
            parts.append(f"  hint: {hint}")
        parts.append(f"  docs: {DOCS}#{type(self).__name__.lower()}")
        super().__init__("\n".join(parts))


class ShapeError(SpmdError, ValueError):
    """Operand shapes do not fit the op."""


class DTypeError(SpmdError, TypeError):
    """Operand dtypes do not fit the op."""


class ShardingError(SpmdError, ValueError):
    """A sharding or partition spec is invalid for its array or mesh."""


class MeshError(SpmdError, ValueError):
    """A mesh is malformed or larger than the devices available."""


class TracerError(SpmdError, TypeError):
    """A traced value was used where a concrete Python value is needed (if, int(), bool())."""


class NonDifferentiableError(SpmdError, TypeError):
    """grad reached an op that has no derivative."""


class IRParseError(SpmdError, ValueError):
    """IR text could not be parsed."""


class VerifierError(SpmdError, RuntimeError):
    """A graph broke an IR invariant (after a pass)."""


class CollectiveTimeoutError(SpmdError, RuntimeError):
    """A collective waited longer than SPMD_COLLECTIVE_TIMEOUT."""


class RemoteError(SpmdError, RuntimeError):
    """A rank, thread or actor failed; carries its traceback."""


class LaunchError(SpmdError, ValueError):
    """Bad spmd-launch input."""


class CheckpointError(SpmdError, ValueError):
    """A checkpoint is corrupt, incomplete or does not match its target."""


class SimulationError(SpmdError, RuntimeError):
    """The simulated device ran out of memory or was asked for something it cannot model."""


class ArgumentError(SpmdError, ValueError):
    """An argument of the wrong kind: out-of-range argnums, a non-function where one belongs."""


class ConfigError(SpmdError, ValueError):
    """An SPMD_* environment variable or spmd.config setting spmd does not understand."""


class InternalError(SpmdError, RuntimeError):
    """A broken internal invariant: this is a bug in spmd."""

    def __init__(self, problem: str, loc: str | None = None, hint: str | None = None):
        super().__init__(f"{problem} (this is a bug in spmd)", loc, hint)
