"""The Ray actors' buffer table (launch/buffers.py) when calls arrive out of order: a take
before its store waits for it, a free before its store drops the store, an abort wakes a take.
The Ray crash of issue 15 (KeyError on a handle the actor did not hold yet) was a run that
started before its store."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from launch.buffers import BufferTable
from spmd.errors import RemoteError


def test_take_before_store_waits_for_it() -> None:
    table = BufferTable()
    value = np.arange(6.0)
    timer = threading.Timer(0.2, table.store, (7, value))
    timer.start()
    start = time.monotonic()
    (got,) = table.take([7], timeout=30)
    assert got is value
    assert time.monotonic() - start >= 0.15
    timer.join()


def test_free_before_store_drops_the_store() -> None:
    table = BufferTable()
    table.free([3])
    table.store(3, np.ones(2))
    table.store(4, np.zeros(2))
    assert len(table) == 1
    with pytest.raises(RemoteError, match=r"handle\(s\) \[3\] never reached"):
        table.take([3], timeout=0.05)


def test_free_after_store_releases_the_buffer() -> None:
    table = BufferTable()
    table.store(1, np.ones(2))
    table.free([1])
    assert len(table) == 0


def test_abort_wakes_a_waiting_take_and_reset_clears_it() -> None:
    table = BufferTable()
    threading.Timer(0.1, table.abort, ("device 2 failed",)).start()
    with pytest.raises(RemoteError, match="device 2 failed"):
        table.take([5], timeout=30)
    table.reset()
    table.store(5, np.ones(1))
    np.testing.assert_array_equal(table.take([5], timeout=1)[0], np.ones(1))
