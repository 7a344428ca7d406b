"""Code run in a fresh interpreter at the repository root: what a test of import order or
start-up sees, with none of the test process's modules loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fresh_python(code: str, *args: str, timeout: float = 120) -> str:
    """The stdout of `python -c code args...`; the test fails with the child's stderr if the
    child fails."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
