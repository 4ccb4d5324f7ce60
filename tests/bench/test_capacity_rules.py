"""bench_capacity's verdicts: a level whose generator fell behind fails, and the capacity stops at the first failure."""
from __future__ import annotations

import numpy as np

from bench.bench_capacity import Level, capacity, parse_args
from bench.callgen import FRAME_S, _Call, _send


class StalledSocket:
    """A peer that takes no byte for the first ``stalled`` sends, then everything."""

    def __init__(self, stalled: int) -> None:
        self.stalled = stalled

    def send(self, data: bytes) -> int:
        self.stalled -= 1
        return 0 if self.stalled >= 0 else len(data)

    def recv(self, size: int) -> bytes:
        raise BlockingIOError


def level(lateness_ms: np.ndarray) -> Level:
    """A level that passes on every other count: all windows scored, end-to-end p95 50 ms, no errors."""
    return Level(100, 1.0, 5000, 0, np.full(10, 40.0), np.full(10, 50.0), 1.0, 0, 0.1, lateness_ms, 1.0, [])


def test_capacity_is_the_highest_level_below_the_first_failure() -> None:
    # docs/capacity.md run 1, two workers: 200 failed, 250 passed; the old rule (most calls that passed) said 250
    assert capacity([(100, True), (150, True), (200, False), (250, True)]) == 150
    assert capacity([(50, False), (100, True)]) == 0
    assert capacity([(50, True), (100, True)]) == 100


def test_a_frame_counts_as_sent_when_the_kernel_takes_its_last_byte() -> None:
    frames = [b"x" * 320] * 4
    call = _Call(b"uuid", frames, start=100.0)
    call.sock = StalledSocket(stalled=3)
    for i in range(3):  # the kernel takes nothing: nothing is sent, however punctually it was handed over
        _send(call, now=call.due(i))
    assert not call.sent_at[:3].any()
    _send(call, now=call.due(3))  # the fourth pass flushes frames 0-3 at once
    assert list(call.sent_at[:4]) == [call.due(3)] * 4
    assert np.allclose(call.lateness[:4], [3 * FRAME_S, 2 * FRAME_S, FRAME_S, 0.0])


def test_a_level_whose_generator_lagged_fails() -> None:
    on_time = level(np.full(1000, 3.0))
    assert on_time.passed
    behind = np.concatenate([np.full(970, 3.0), np.full(30, 60.0)])  # 3 % of frames 60 ms late
    lagged = level(behind)
    assert not lagged.generator_on_time and not lagged.passed
    assert "generator behind real time" in lagged.line()



def test_the_shipped_model_is_the_default_not_the_working_directory() -> None:
    assert parse_args(["--levels", "50"]).model == ""  # "" resolved as a path was the working directory
    assert parse_args(["--model", "emovoice_daemon"]).model.startswith("/")
