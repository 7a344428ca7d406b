"""The MPI transport's watchdog: reports and aborts a stuck collective, never a finished one."""

from __future__ import annotations

import threading
import time

import pytest

from collectives import watchdog as watchdog_module
from collectives.watchdog import TIMEOUT_EXIT_CODE, Watchdog


def test_expired_call_is_reported_with_kind_axes_line_and_rank_then_aborted(monkeypatch, capsys):
    monkeypatch.setattr(watchdog_module, "ABORT_GRACE_S", 0.05)
    aborted = threading.Event()
    codes: list[int] = []

    def abort(code: int) -> None:
        codes.append(code)
        aborted.set()

    dog = Watchdog(0.3, rank=5, abort=abort)
    start = time.monotonic()
    dog.arm("all_gather", ("data", "model"), "train.py:42")
    assert aborted.wait(5)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 2.5
    assert codes == [TIMEOUT_EXIT_CODE]
    err = capsys.readouterr().err
    assert "CollectiveTimeoutError: all_gather over mesh axes ('data', 'model')" in err
    assert "waited more than 0.3 s (called at train.py:42) on MPI rank 5" in err
    assert "aborts the MPI job" in err


def test_calls_that_return_in_time_never_fire():
    codes: list[int] = []
    dog = Watchdog(0.2, rank=0, abort=codes.append)
    stop = time.monotonic() + 0.8  # several timeouts' worth of short calls and idle gaps
    while time.monotonic() < stop:
        dog.arm("all_reduce", ("x",), None)
        time.sleep(0.05)
        dog.disarm()
        time.sleep(0.01)
    time.sleep(0.4)
    assert codes == []


def test_arming_and_disarming_cost_about_a_microsecond():
    dog = Watchdog(300, rank=0, abort=lambda code: None)
    dog.arm("all_reduce", ("x",), None)  # starts the thread
    repeats = 20000
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            dog.arm("all_reduce", ("x",), "f.py:1")
            dog.armed = None  # what MPICommunicator._call does
        best = min(best, (time.perf_counter() - start) / repeats)
    dog.disarm()
    assert best < 5e-6, f"arm+disarm took {best * 1e6:.2f} us"


@pytest.mark.mpi
def test_result_buffers_are_reused_only_once_released():
    from test_transports import mpiexec

    output = mpiexec("reuse")
    assert output.count("REUSE ok") == 8, output[-3000:]
