"""Post-call summary (LegSummary) and the SQLite call history behind /calls."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from emovoice_daemon.outputs import history as history_mod
from emovoice_daemon.judgement.policy import Transition
from emovoice_daemon.judgement.summary import LegSummary, downsample
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.history import CallHistory


def probs(neg: float, pos: float = 0.0) -> dict[str, float]:
    return {"NEGATIVE": neg, "NEUTRAL": 1 - neg - pos, "POSITIVE": pos}


def test_class_share_counts_overlapping_windows_once() -> None:
    s = LegSummary()
    s.add(0.0, 3.0, probs(0.1))           # 3 s neutral
    s.add(1.0, 4.0, probs(0.9))           # +1 s negative
    s.add(2.0, 5.0, probs(0.1, pos=0.8))  # +1 s positive
    s.add(3.0, 6.0, None)                 # skipped (silence)
    out = s.summary(6.0)
    assert out["class_share"] == {"NEGATIVE": 0.2, "NEUTRAL": 0.6, "POSITIVE": 0.2}
    assert (out["windows_scored"], out["windows_skipped"]) == (3, 1)
    assert (out["peak_negative"], out["peak_negative_at"]) == (0.9, 4.0)


def test_escalation_log_merges_upgrade_and_clear_into_one_period() -> None:
    s = LegSummary()
    s.transition(Transition("raised", 10.0, 0.65, "watch", "negative above threshold"))
    s.transition(Transition("raised", 13.0, 0.8, "alert", "negative above alert threshold"))
    s.transition(Transition("cleared", 30.0, 0.3, duration_s=20.0))
    s.transition(Transition("raised", 70.0, 0.7, "watch", "frustration increasing"))
    out = s.summary(80.0)
    assert out["escalations"] == 2
    assert out["escalation_log"] == [
        {"at": 10.0, "severity": "alert", "reason": "negative above threshold", "cleared_at": 30.0, "duration_s": 20.0},
        {"at": 70.0, "severity": "watch", "reason": "frustration increasing"}]


def test_timeline_is_downsampled_keeping_peaks() -> None:
    points = [(float(i), 0.99 if i == 257 else 0.1, 0.2) for i in range(1, 1001)]
    tl = downsample(points, 120)
    assert len(tl["t"]) <= 120 and tl["t"][-1] == 1000.0
    assert max(tl["negative"]) == 0.99
    assert downsample(points[:5], 120)["t"] == [1.0, 2.0, 3.0, 4.0, 5.0]


def started(bus: EventBus, call_id: str, role: str, **meta: str) -> dict:
    return bus.make_event("call.started", call_id, role, source="ari", meta=meta, model={"name": "m", "trained": False})


def ended(bus: EventBus, call_id: str, role: str, peak: float, escalations: int) -> dict:
    summary = {**LegSummary().summary(10.0), "peak_negative": peak, "escalations": escalations}
    return bus.make_event("call.ended", call_id, role, reason="hangup", summary=summary)


@pytest.fixture
def store(tmp_path: Path) -> CallHistory:
    h = CallHistory(str(tmp_path / "h" / "history.sqlite3"))
    yield h
    h.close()


async def test_history_records_legs_of_a_call_and_serves_them(store: CallHistory) -> None:
    bus = EventBus()
    bus.add_sink(store.sink)
    bus.publish(started(bus, "c1", "customer", agent="1001", caller="+4930"))
    bus.publish(started(bus, "c1", "agent", agent="1001"))
    bus.publish(started(bus, "c2", "mixed", agent="1002"))
    bus.publish(bus.make_event("score", "c2", "mixed", probs=probs(0.2)))  # ignored by the store
    bus.publish(ended(bus, "c1", "customer", 0.91, 1))
    bus.publish(ended(bus, "c1", "agent", 0.3, 0))
    await store.drain()

    app = web.Application()
    history_mod.add_routes(app, store)
    async with TestClient(TestServer(app)) as client:
        calls = (await (await client.get("/calls")).json())["calls"]
        assert [c["call_id"] for c in calls] == ["c2", "c1"]
        c1 = next(c for c in calls if c["call_id"] == "c1")
        assert (c1["live"], c1["peak_negative"], c1["escalations"]) == (False, 0.91, 1)
        assert c1["meta"] == {"agent": "1001", "caller": "+4930"}
        assert "timeline" not in c1["legs"][0]["summary"]
        live = (await (await client.get("/calls?live=1")).json())["calls"]
        assert [c["call_id"] for c in live] == ["c2"]
        mine = (await (await client.get("/calls?agent=1001")).json())["calls"]
        assert [c["call_id"] for c in mine] == ["c1"]
        one = await (await client.get("/calls/c1")).json()
        assert [leg["role"] for leg in one["legs"]] == ["agent", "customer"]
        assert one["legs"][1]["summary"]["timeline"] == {"t": [], "negative": [], "smoothed": []}
        missing = await client.get("/calls/nope")
        assert missing.status == 404
        bad = await client.get("/calls?limit=lots")
        assert bad.status == 400 and "limit must be an integer" in (await bad.json())["error"]
        assert (await client.get("/calls?limit=100000")).status == 400


async def test_history_survives_a_restart_and_marks_unfinished_legs_lost(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite3")
    bus = EventBus()
    first = CallHistory(path)
    first.record(started(bus, "c9", "mixed"))
    first.close()
    second = CallHistory(path)
    call = second.get_call("c9")
    second.close()
    assert call is not None and call["live"] is False and call["legs"][0]["reason"] == "lost"


async def test_retention_deletes_old_legs(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite3")
    bus = EventBus()
    old = started(bus, "old", "mixed")
    old["ts"] -= 40 * 86400
    h = CallHistory(path)
    h.record(old)
    h.record(started(bus, "new", "mixed"))
    h.close()
    h = CallHistory(path, retention_days=30)
    assert [c["call_id"] for c in h.list_calls()] == ["new"]
    h.close()


async def test_a_bad_event_is_logged_and_does_not_stop_the_writer(store: CallHistory, caplog) -> None:
    task = asyncio.create_task(store.run())
    bus = EventBus()
    broken = bus.make_event("call.ended", "x", "mixed", reason="eof")  # no summary
    store.sink(broken)
    store.sink(started(bus, "ok", "mixed"))
    for _ in range(100):
        if store.get_call("ok"):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert store.get_call("ok") is not None
    assert "cannot record call.ended of x" in caplog.text



async def test_a_call_ended_on_the_bus_is_ended_in_the_next_request(store: CallHistory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that saw call.ended on /events and then asks /calls must find the call ended, however slow
    the writer (a loaded box: the SQLite commit lags the WebSocket)."""
    record = store.record

    def slow_record(event: dict, msg_id: str | None = None) -> bool:
        time.sleep(0.2)
        return record(event, msg_id)

    monkeypatch.setattr(store, "record", slow_record)
    writer = asyncio.create_task(store.run())
    bus = EventBus()
    bus.add_sink(store.sink)
    app = web.Application()
    history_mod.add_routes(app, store)
    try:
        async with TestClient(TestServer(app)) as client:
            bus.publish(started(bus, "c1", "mixed"))
            bus.publish(ended(bus, "c1", "mixed", 0.5, 0))
            listed = (await (await client.get("/calls")).json())["calls"]
            assert [(c["call_id"], c["live"]) for c in listed] == [("c1", False)]
            bus.publish(started(bus, "c2", "mixed"))
            assert (await (await client.get("/calls/c2")).json())["live"] is True
    finally:
        writer.cancel()
