"""emovoice-top's state and rendering, from scripted events."""
from __future__ import annotations

import re
import subprocess
import sys
import time

from rich.console import Console

from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.tools.top import SPARK, TopState, render, sparkline


def score(bus: EventBus, call_id: str, role: str, end: float, neg: float, smoothed: float) -> dict:
    probs = {"NEGATIVE": neg, "NEUTRAL": 1 - neg, "POSITIVE": 0.0}
    return bus.make_event("score", call_id, role, window={"start": end - 3, "end": end}, probs=probs,
                          label=max(probs, key=probs.get), negative_smoothed=smoothed, lag_ms=20.0, model={})


def screen(state: TopState, now: float) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(render(state, now))
    return console.export_text()


def test_two_legs_of_a_separated_call_share_one_row() -> None:
    bus, state = EventBus(), TopState()
    for role in ("customer", "agent"):
        state.apply(bus.make_event("call.started", "call-ari-1", role, source="ari",
                                   meta={"agent": "1001", "caller": "+4930123"}, model={}))
    state.apply(score(bus, "call-ari-1", "customer", 10.0, 0.9, 0.8))
    state.apply(score(bus, "call-ari-1", "agent", 10.0, 0.1, 0.1))
    state.apply(bus.make_event("escalation.raised", "call-ari-1", "customer", severity="alert", reason="r",
                               at=10.0, negative_smoothed=0.8))
    assert list(state.calls) == ["call-ari-1"]
    text = screen(state, state.calls["call-ari-1"].started + 75)
    assert text.count("call-ari") == 1
    assert "cust  NEGATIVE 0.90" in text and "agent NEUTRAL 0.90" in text
    assert "ALERT" in text and "1001" in text and "+4930123" in text and "1:15" in text


def test_sort_keys_order_rows() -> None:
    bus, state = EventBus(), TopState()
    for i, (call_id, neg) in enumerate([("calm", 0.1), ("upset", 0.9), ("middle", 0.5)]):
        started = bus.make_event("call.started", call_id, "mixed", source="audiosocket", meta={}, model={})
        started["ts"] = 1000.0 + i
        state.apply(started)
        state.apply(score(bus, call_id, "mixed", 5.0, neg, neg))
    state.apply(bus.make_event("escalation.raised", "middle", "mixed", severity="watch", reason="r", at=5,
                               negative_smoothed=0.5))
    text = screen(state, 1010.0)
    assert "│ NEGATIVE 0.90" in text and "mix" not in text  # a mixed leg's cell carries no role tag
    order = {}
    for key in ("n", "d", "c", "s"):
        state.sort = key
        order[key] = [c.call_id for c in state.rows()]
    assert order == {"n": ["upset", "middle", "calm"], "d": ["calm", "upset", "middle"],
                     "c": ["calm", "middle", "upset"], "s": ["middle", "upset", "calm"]}


def test_ended_calls_linger_then_disappear() -> None:
    bus, state = EventBus(), TopState()
    state.apply(bus.make_event("call.started", "c1", "mixed", source="audiosocket", meta={}, model={}))
    ended = bus.make_event("call.ended", "c1", "mixed", reason="eof", summary={})
    state.apply(ended)
    state.expire(ended["ts"] + 1)
    assert "ended" in screen(state, ended["ts"] + 1)
    state.expire(ended["ts"] + 10)
    assert state.calls == {}


def test_seed_from_history_restores_live_calls_after_reconnect() -> None:
    state = TopState()
    state.seed([{"call_id": "c9", "started": 50.0, "meta": {"agent": "2002"}, "legs": [{"role": "customer"},
                                                                                      {"role": "agent"}]}])
    assert set(state.calls["c9"].legs) == {"customer", "agent"} and state.calls["c9"].meta["agent"] == "2002"


def test_sparkline_covers_the_last_minute_with_bucket_maxima() -> None:
    points = [(float(t), 0.0) for t in range(1, 121)]
    points[100] = (101.0, 1.0)
    line = sparkline(points, width=30)
    assert len(line) == 30 and line.count(SPARK[-1]) == 1 and set(line) == {SPARK[0], SPARK[-1]}
    assert sparkline([]) == ""
    assert sparkline([(5.0, 0.5)], width=10) == " " * 9 + SPARK[4]


def test_header_counts_are_the_rows_below_it() -> None:
    bus, state = EventBus(), TopState()
    state.health = {"legs": 7}  # a stale /health poll must not contradict the rows
    for role in ("customer", "agent"):
        state.apply(bus.make_event("call.started", "separated", role, source="ari", meta={}, model={}))
    state.apply(bus.make_event("call.started", "mixed-1", "mixed", source="audiosocket", meta={}, model={}))
    state.apply(bus.make_event("call.started", "gone", "mixed", source="audiosocket", meta={}, model={}))
    state.apply(bus.make_event("call.ended", "gone", "mixed", reason="eof", summary={}))
    text = screen(state, state.calls["separated"].started + 5)
    assert "calls 2 (+1 ended)   legs 3" in text
    assert all(text.count(row) == 1 for row in ("separate", "mixed-1", "gone"))  # three rows, the last one ended


def test_help_has_no_rst_markup() -> None:
    out = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.top", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "emovoice-top: a supervisor's live terminal view" in out.stdout
    assert "``" not in out.stdout


def test_a_leg_on_hold_says_so_until_speech_is_back() -> None:
    bus, state = EventBus(), TopState()
    state.apply(bus.make_event("call.started", "held", "customer", source="audiosocket", meta={}, model={}))
    state.apply(score(bus, "held", "customer", 5.0, 0.2, 0.2))
    state.apply(bus.make_event("call.hold", "held", "customer", on_hold=True, at=12.0))
    assert "cust  on hold" in screen(state, state.calls["held"].started + 20)
    state.apply(bus.make_event("call.hold", "held", "customer", on_hold=False, at=40.0))
    state.apply(score(bus, "held", "customer", 41.0, 0.1, 0.15))
    assert "cust  NEUTRAL 0.90" in screen(state, state.calls["held"].started + 45)


def test_a_call_with_a_name_in_its_meta_shows_its_name_and_agent() -> None:
    bus, state = EventBus(), TopState()
    state.apply(bus.make_event("call.started", "5f0c1d2e-aaaa-bbbb-cccc-000000000001", "mixed", source="audiosocket",
                               meta={"name": "calm-then-angry", "agent": "201"}, model={}))
    state.apply(bus.make_event("call.started", "9e8d7c6b-aaaa-bbbb-cccc-000000000002", "mixed", source="audiosocket",
                               meta={}, model={}))
    text = screen(state, time.time())
    assert re.search(r"calm-then-angry\s+│?\s*201", text), text  # the demo's name, as its console prints it
    assert "9e8d7c6b" in text and "5f0c1d2e" not in text


def test_verdict_keys_name_the_selected_calls_escalation_or_the_call() -> None:
    import pytest

    from emovoice_daemon.tools.top import TopState

    state = TopState()
    with pytest.raises(ValueError, match="select a call"):
        state.verdict_path("confirmed")
    state.apply({"type": "call.started", "call_id": "c1", "role": "customer", "ts": 1.0, "meta": {}})
    state.move(1)
    assert state.verdict_path("upset") == "/calls/c1/feedback"
    with pytest.raises(ValueError, match="no escalation"):
        state.verdict_path("dismissed")
    state.apply({"type": "escalation.raised", "call_id": "c1", "role": "customer", "ts": 2.0, "severity": "alert",
                 "escalation_id": "e9"})
    assert state.verdict_path("confirmed") == "/escalations/e9/feedback"
