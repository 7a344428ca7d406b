"""Entry point of every rank under `spmd-launch --runtime mpi`:
`mpiexec -n N python -m launch.mpi_entry script.py args...`.
"""

from __future__ import annotations

import runpy
import sys


def main(argv: list[str]) -> None:
    """Starts the MPI runtime, then runs the script as __main__; a failure ends every rank."""
    from spmd import distributed

    distributed.initialize("mpi")
    from launch.mpi import abort_job

    rank = distributed.process_index()
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            abort_job(rank, exc, code=exc.code if isinstance(exc.code, int) else 1)
    except BaseException as exc:  # noqa: BLE001 - any failure must stop the other ranks
        abort_job(rank, exc)
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
