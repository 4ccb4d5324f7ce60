"""The daemon's journal: an operator tailing it sees each call and each escalation at INFO."""
from __future__ import annotations

import logging

import pytest

from emovoice_daemon.outputs.events import EventBus, journal


def test_calls_and_escalations_are_one_info_line_each(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    bus.add_sink(journal)
    with caplog.at_level(logging.INFO, logger="emovoice_daemon.journal"):
        bus.publish(bus.make_event("call.started", "c1", "customer", source="audiosocket", meta={}))
        bus.publish(bus.make_event("score", "c1", "customer", probs={}))
        bus.publish(bus.make_event("escalation.raised", "c1", "customer", severity="alert", at=14.0,
                                   reason="negative above threshold", negative_smoothed=0.81))
        bus.publish(bus.make_event("escalation.cleared", "c1", "customer", at=30.0, duration_s=16.0))
        bus.publish(bus.make_event("call.ended", "c1", "customer", reason="eof",
                                   summary={"duration_s": 31.2, "windows_scored": 29, "peak_negative": 0.93,
                                            "escalations": 1}))
    assert [r.levelname for r in caplog.records] == ["INFO"] * 4
    assert [r.getMessage() for r in caplog.records] == [
        "call c1 customer started (audiosocket)",
        "call c1 customer escalation raised: alert at 14.0 s, negative above threshold (NEGATIVE smoothed 0.81)",
        "call c1 customer escalation cleared at 30.0 s after 16.0 s",
        "call c1 customer ended (eof): 31 s, 29 windows scored, peak NEGATIVE 0.93, 1 escalations",
    ]
