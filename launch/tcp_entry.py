"""Entry point of every process under `spmd-launch --runtime tcp`:
`python -m launch.tcp_entry script.py args...` with torchrun's variables set by launch.processes.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from types import TracebackType


def main(argv: list[str]) -> None:
    """Starts the tcp runtime, then runs the script as __main__ (like `python script.py`); an
    uncaught exception goes to the runtime's excepthook, which stops every process."""
    from launch.processes import end_with_launcher
    from spmd import distributed

    end_with_launcher()
    distributed.initialize("tcp")
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - reported once, then every process stops
        sys.excepthook(type(exc), exc, _from_script(exc, argv[0]))
    sys.stdout.flush()


def _from_script(exc: BaseException, script: str) -> TracebackType | None:
    """exc's traceback from the script's first frame on (this entry and runpy are noise)."""
    trace = exc.__traceback__
    while trace is not None and trace.tb_frame.f_code.co_filename != script:
        trace = trace.tb_next
    if trace is not None:
        exc.with_traceback(trace)
    return exc.__traceback__


if __name__ == "__main__":
    main(sys.argv[1:])
