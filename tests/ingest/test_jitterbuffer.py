from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emovoice_daemon.ingest.jitterbuffer import JitterBuffer, seq_delta


def test_seq_delta_wraps_around() -> None:
    assert seq_delta(0, 65535) == 1
    assert seq_delta(65535, 0) == -1
    assert seq_delta(10, 5) == 5


def test_in_order_packets_are_released_immediately() -> None:
    jb: JitterBuffer[str] = JitterBuffer(depth=3)
    assert jb.push(7, "a") == ["a"]
    assert jb.push(8, "b") == ["b"]


def test_swapped_packets_come_out_in_order() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=3)
    out = [x for seq in (100, 102, 101, 103) for x in jb.push(seq, seq)]
    assert out == [100, 101, 102, 103]
    assert jb.stats.lost == 0


def test_missing_packet_is_reported_lost_after_depth_packets() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=2)
    jb.push(1, 1)
    assert jb.push(3, 3) == []
    assert jb.push(4, 4) == []
    assert jb.push(5, 5) == [None, 3, 4, 5]
    assert jb.stats.lost == 1


def test_late_and_duplicate_packets_are_dropped_and_counted() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=1)
    for seq in (1, 3, 4):
        jb.push(seq, seq)
    assert jb.push(2, 2) == []  # its slot was already concealed
    assert jb.push(4, 4) == []  # already played: late as well
    assert (jb.stats.late, jb.stats.lost) == (2, 1)
    jb.push(6, 6)  # held: 5 is still awaited
    assert jb.push(6, 6) == []
    assert jb.stats.duplicate == 1


def test_sequence_wraparound_is_continuous() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=2)
    out = [x for seq in (65534, 0, 65535, 1) for x in jb.push(seq, seq)]
    assert out == [65534, 65535, 0, 1]


def test_big_jump_resyncs_instead_of_reporting_mass_loss() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=2, max_gap=50)
    jb.push(10, 10)
    assert jb.push(30000, 30000) == [30000]
    assert jb.stats.lost == 0 and jb.stats.resyncs == 1


def test_first_packet_sets_the_playout_point() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=3)
    assert jb.push(5, 5) == [5]
    assert jb.push(4, 4) == [] and jb.stats.late == 1


def test_flush_conceals_gaps_between_held_packets() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=5)
    jb.push(1, 1)
    jb.push(3, 3)
    assert jb.flush() == [None, 3]


def test_rejects_inconsistent_sizes() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(depth=5, max_gap=5)


@given(st.permutations(list(range(40))), st.integers(0, 65535))
def test_any_reordering_within_depth_is_undone(order: list[int], start: int) -> None:
    # Displace each packet after the first (which sets the play-out point) by at most 3 places.
    jittered = [0] + sorted(range(1, 40), key=lambda i: i + (order[i] % 4))
    jb: JitterBuffer[int] = JitterBuffer(depth=4)
    out = [x for i in jittered for x in jb.push((start + i) % 65536, i)] + jb.flush()
    assert out == list(range(40))
    assert jb.stats.lost == 0
