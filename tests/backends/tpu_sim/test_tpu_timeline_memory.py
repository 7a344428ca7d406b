"""Timeline (Chrome/Perfetto trace JSON) and per-device HBM tracking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.tpu_sim.memory import MemoryTracker
from backends.tpu_sim.timeline import Timeline
from spmd.errors import SimulationError


def _program(timeline: Timeline) -> None:
    for d in range(timeline.num_devices):
        timeline.add(d, "matmul", 10e-6, args={"flops": 1e9})
    timeline.add_group(
        range(timeline.num_devices),
        "all_reduce",
        5e-6,
        "collective",
        args={"bytes": 1024, "axes": ("data",)},
    )
    for d in range(timeline.num_devices):
        timeline.add(d, "tanh", 4e-6)


def test_chrome_trace_is_valid_json_with_one_track_per_device(tmp_path: Path):
    # Chrome Trace Event Format (the format Perfetto's UI loads): "X" complete events with
    # ts/dur in microseconds, "M" metadata naming each process.
    timeline = Timeline(4)
    _program(timeline)
    path = timeline.to_chrome_trace(tmp_path / "trace.json")
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1, 2, 3}
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {d: f"device {d}" for d in range(4)}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]  # no temp file left


def test_overlap_runs_collective_beside_independent_compute():
    overlapped = Timeline(2, overlap=True)
    _program(overlapped)
    serial = Timeline(2, overlap=False)
    _program(serial)
    assert overlapped.step_time() == pytest.approx(14e-6)
    assert serial.step_time() == pytest.approx(19e-6)


def test_dependent_event_waits_for_ready():
    timeline = Timeline(1)
    ar = timeline.add(0, "all_reduce", 5e-6, "collective")
    use = timeline.add(0, "add", 1e-6, ready=ar.end)
    assert use.start == pytest.approx(5e-6)
    assert timeline.busy_time(0, "ici") == pytest.approx(5e-6)


def test_collective_starts_when_the_slowest_device_is_free():
    timeline = Timeline(2)
    timeline.add(0, "slow", 7e-6, "collective")
    events = timeline.add_group([0, 1], "all_gather", 1e-6)
    assert [e.start for e in events] == [pytest.approx(7e-6)] * 2


def test_timeline_rejects_bad_device():
    with pytest.raises(SimulationError, match="device 5 out of range"):
        Timeline(2).add(5, "x", 1.0)


def test_memory_tracker_tracks_peak():
    memory = MemoryTracker(1000)
    memory.alloc("a", 400)
    memory.alloc("b", 500)
    memory.free("a")
    memory.alloc("c", 100)
    assert memory.peak == 900
    assert memory.current == 600
    assert [b.name for b in memory.peak_live] == ["a", "b"]


def test_out_of_memory_names_the_biggest_buffers_and_lines():
    memory = MemoryTracker(16 * 2**30, device=3)
    memory.alloc("params", 8 * 2**30, loc="train.py:10 in init")
    memory.alloc("bias", 2**20, loc="train.py:11 in init")
    memory.alloc("activations", 6 * 2**30, loc="train.py:42 in loss")
    with pytest.raises(SimulationError) as e:
        memory.alloc("logits", 4 * 2**30, loc="train.py:50 in loss")
    text = str(e.value)
    assert "device 3 out of HBM" in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "params" in line)
    assert "train.py:10" in lines[first]
    assert "activations" in lines[first + 1] and "train.py:42" in lines[first + 1]
    assert "logits" in lines[first + 2]
    assert "at train.py:50 in loss" in text


def test_double_alloc_and_bad_free_raise():
    memory = MemoryTracker(100)
    memory.alloc("a", 1)
    with pytest.raises(SimulationError, match="already live"):
        memory.alloc("a", 1)
    with pytest.raises(SimulationError, match="not live"):
        memory.free("zz")
