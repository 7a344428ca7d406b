"""Schedule tables: each (stage, microbatch) forward and backward runs once, after what it
needs; bubble fractions against the closed forms; live activations (1F1B bounded by the
stage count, GPipe growing with the microbatches)."""

import pytest

from spmd.errors import ShapeError
from spmd.pipeline_schedule import BACKWARD, FORWARD, gpipe, interleaved, make_schedule, one_f_one_b

CASES = [(p, m) for p in (2, 4, 8) for m in (1, p, 4 * p)]


def _check_complete_and_ordered(s):
    when = {}
    for t, row in enumerate(s.ticks):
        for d, slot in enumerate(row):
            if slot is None:
                continue
            assert slot.stage % s.devices == d
            key = (slot.kind, slot.stage, slot.microbatch)
            assert key not in when
            when[key] = t
    want = {
        (k, j, i)
        for k in (FORWARD, BACKWARD)
        for j in range(s.stages)
        for i in range(s.microbatches)
    }
    assert set(when) == want
    for (kind, j, i), t in when.items():
        if kind == FORWARD and j > 0:
            assert when[(FORWARD, j - 1, i)] < t
        if kind == BACKWARD:
            assert when[(FORWARD, j, i)] < t
            if j < s.stages - 1:
                assert when[(BACKWARD, j + 1, i)] < t


@pytest.mark.parametrize("p,m", CASES)
@pytest.mark.parametrize("build", [gpipe, one_f_one_b])
def test_bubble_is_p_minus_1_over_m_plus_p_minus_1(build, p, m):
    s = build(p, m)
    _check_complete_and_ordered(s)
    assert s.num_ticks == 2 * (m + p - 1)
    assert s.bubble_fraction() == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p,m", CASES)
def test_one_f_one_b_keeps_at_most_p_activations_gpipe_keeps_m(p, m):
    assert one_f_one_b(p, m).peak_live_activations() == min(p, m)
    assert gpipe(p, m).peak_live_activations() == m


def test_one_f_one_b_memory_does_not_grow_with_microbatches():
    peaks = [one_f_one_b(4, m).peak_live_activations() for m in (4, 8, 16, 32)]
    assert peaks == [4, 4, 4, 4]
    assert [gpipe(4, m).peak_live_activations() for m in (4, 8, 16, 32)] == [4, 8, 16, 32]


@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (4, 2, 8), (4, 4, 4), (8, 2, 16)])
def test_interleaved_bubble_is_smaller_as_theory_says(p, v, m):
    s = interleaved(p, v, m)
    _check_complete_and_ordered(s)
    assert s.stages == p * v
    assert s.bubble_fraction() == pytest.approx((p - 1) / (v * m + p - 1))
    assert s.bubble_fraction() < gpipe(p, m).bubble_fraction()


@pytest.mark.parametrize("p,v,m", [(2, 2, 1), (2, 3, 3), (4, 2, 6), (4, 3, 7), (8, 2, 3)])
def test_interleaved_takes_a_last_group_smaller_than_the_ring(p, v, m):
    s = interleaved(p, v, m)
    _check_complete_and_ordered(s)
    # the last group's laps wait for its first microbatch: more bubble than p | m gives
    assert s.bubble_fraction() > (p - 1) / (v * m + p - 1)
    assert s.bubble_fraction() <= gpipe(p, m).bubble_fraction()


def test_gpipe_forward_ticks_enter_at_stage_0_and_leave_at_the_last():
    rows = gpipe(3, 2).forward_ticks()
    assert len(rows) == 4
    assert [str(s) if s else "." for s in rows[1]] == ["F1@s0", "F0@s1", "."]
    assert [str(s) if s else "." for s in rows[3]] == [".", ".", "F1@s2"]


def test_backward_cost_weighs_the_bubble():
    # GPipe with B = 2F: forward ticks last 1, backward ticks 2; both halves idle alike
    assert gpipe(4, 4).bubble_fraction(backward_cost=2.0) == pytest.approx(3 / 7)
    # 1F1B's mixed ticks last as long as their backward: its forwards then idle half a tick
    assert one_f_one_b(4, 4).bubble_fraction(backward_cost=2.0) > 3 / 7


@pytest.mark.parametrize(
    "args,match",
    [
        (("zigzag", 4, 4), "unknown pipeline schedule"),
        (("gpipe", 4, 4, 2), "one stage per device"),
        (("gpipe", 0, 4), "positive int"),
    ],
)
def test_bad_schedule_arguments_raise(args, match):
    with pytest.raises(ShapeError, match=match):
        make_schedule(*args)
