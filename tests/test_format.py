"""The code is formatted by `ruff format` (packages, examples, benchmarks and tests; the
[tool.ruff.format] table in pyproject.toml excludes only Markdown) and passes `ruff check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_code_is_formatted() -> None:
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:] + (
        "\nrun `python3 -m ruff format .` and commit the result"
    )


def test_ruff_check_passes() -> None:
    done = ruff("check", ".")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
