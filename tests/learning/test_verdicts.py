"""Verdicts: the feedback API's auth and bad input, the label rule, and the feature store (retention, deletion)."""
from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from emovoice_daemon.config import LearningConfig, NotifierConfig
from emovoice_daemon.learning.capture import VerdictRecorder, label
from emovoice_daemon.learning.recent import RecentWindows, Window
from emovoice_daemon.learning.store import FeatureStore, Row
from emovoice_daemon.outputs.api import ApiContext, build_app
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.feedback import FeedbackDesk
from emovoice_daemon.outputs.notifier import AgentNotifier
from emovoice_daemon.scoring.engine import WindowResult

TOKEN = "api-token"


def publish(bus: EventBus, kind: str, call_id: str, role: str = "customer", **fields) -> dict:
    event = bus.make_event(kind, call_id, role, **fields)
    bus.publish(event)
    return event


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
async def client(bus: EventBus):
    notifier = AgentNotifier(NotifierConfig(agents={"201": "tok-201", "202": "tok-202"}), TOKEN)
    desk = FeedbackDesk(bus, TOKEN, grace_s=600, agent_of=lambda c: (call.agent if (call := notifier.calls.get(c)) else None),
                        authenticate=notifier.authenticate)
    bus.add_sink(notifier.sink)
    bus.add_sink(desk.sink)
    app = build_app(ApiContext(TOKEN, False, bus, lambda: {}, notifier=notifier, feedback=desk))
    async with TestClient(TestServer(app)) as c:
        publish(bus, "call.started", "c1", source="audiosocket", meta={"agent": "201"}, model={})
        publish(bus, "escalation.raised", "c1", escalation_id="e1", severity="alert", reason="r", at=20.0,
                negative_smoothed=0.8)
        yield c


async def post(client: TestClient, path: str, body, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    resp = await client.post(path, headers=headers, **kwargs)
    return resp.status, await resp.json()


async def test_supervisor_and_own_agent_give_verdicts_which_become_events(client: TestClient, bus: EventBus) -> None:
    seen: list[dict] = []
    bus.add_sink(lambda e: seen.append(e) if e["type"] == "feedback" else None)
    status, event = await post(client, "/escalations/e1/feedback", {"verdict": "confirmed"})
    assert status == 200 and event["by"] == "supervisor" and event["raised_at"] == 20.0
    status, _ = await post(client, "/escalations/e1/feedback", {"verdict": "dismissed", "agent": "201"}, "tok-201")
    assert status == 200
    status, _ = await post(client, "/calls/c1/feedback", {"verdict": "upset", "agent": "201"}, "tok-201")
    assert status == 200
    assert [(e["verdict"], e["by"], e["role"], e.get("escalation_id")) for e in seen] == [
        ("confirmed", "supervisor", "customer", "e1"), ("dismissed", "agent 201", "customer", "e1"),
        ("upset", "agent 201", "customer", None)]


@pytest.mark.parametrize("path, body, token, status", [
    ("/escalations/e1/feedback", {"verdict": "confirmed"}, None, 401),              # no token
    ("/escalations/e1/feedback", {"verdict": "confirmed"}, "wrong", 401),           # wrong token
    ("/escalations/e1/feedback", {"verdict": "confirmed", "agent": "201"}, "tok-202", 401),  # another agent's token
    ("/escalations/e1/feedback", {"verdict": "confirmed", "agent": "202"}, "tok-202", 403),  # not its call
    ("/calls/c1/feedback", {"verdict": "calm", "agent": "202"}, "tok-202", 403),
    ("/escalations/e1/feedback", {"verdict": "maybe"}, TOKEN, 400),                  # unknown verdict
    ("/calls/c1/feedback", {"verdict": "confirmed"}, TOKEN, 400),                    # escalation verdict on a call
    ("/escalations/e1/feedback", "not json", TOKEN, 400),
    ("/escalations/e1/feedback", "[1, 2]", TOKEN, 400),
    ("/escalations/e1/feedback", {"verdict": "confirmed", "agent": 7}, TOKEN, 400),
    ("/escalations/nope/feedback", {"verdict": "confirmed"}, TOKEN, 404),
    ("/calls/nope/feedback", {"verdict": "upset"}, TOKEN, 404),
])
async def test_bad_verdicts_get_a_4xx_and_one_log_line(client: TestClient, bus: EventBus, caplog: pytest.LogCaptureFixture,
                                                     path: str, body, token: str | None, status: int) -> None:
    seen: list[dict] = []
    bus.add_sink(lambda e: seen.append(e) if e["type"] == "feedback" else None)
    with caplog.at_level(logging.WARNING):
        got, answer = await post(client, path, body, token)
    assert got == status and answer["error"]
    assert len([r for r in caplog.records if "feedback refused" in r.getMessage()]) == 1
    assert not seen


async def test_an_oversized_body_is_refused(client: TestClient) -> None:
    status, _ = await post(client, "/calls/c1/feedback", '{"verdict": "upset", "x": "' + "a" * 10000 + '"}')
    assert status == 413


async def test_a_call_ended_past_the_grace_takes_no_verdict(bus: EventBus) -> None:
    desk = FeedbackDesk(bus, TOKEN, grace_s=0.05)
    bus.add_sink(desk.sink)
    publish(bus, "call.started", "c2", source="audiosocket", meta={}, model={})
    publish(bus, "call.ended", "c2", reason="eof", summary={})
    assert desk.call_verdict("c2", "calm", TOKEN, None)["verdict"] == "calm"  # just after hang-up: fine
    time.sleep(0.1)
    with pytest.raises(Exception, match="no live or recent call"):
        desk.call_verdict("c2", "calm", TOKEN, None)


def windows(ends: list[float]) -> list[Window]:
    return [Window(e - 3, e, np.full(4, e, np.float32)) for e in ends]


def test_label_rule() -> None:
    cfg = LearningConfig(lead_s=5, upset_last_s=10)
    held = windows([float(t) for t in range(3, 61)])
    confirmed = label({"verdict": "confirmed", "raised_at": 30.0, "cleared_at": 40.0}, held, cfg)
    assert [w.end_s for w, _ in confirmed] == [float(t) for t in range(25, 41)] and all(u for _, u in confirmed)
    open_ = label({"verdict": "dismissed", "raised_at": 50.0, "cleared_at": None}, held, cfg)
    assert [w.end_s for w, _ in open_] == [float(t) for t in range(45, 61)] and not any(u for _, u in open_)
    upset = label({"verdict": "upset"}, held, cfg)
    assert [w.end_s for w, _ in upset] == [float(t) for t in range(51, 61)] and all(u for _, u in upset)
    calm = label({"verdict": "calm"}, held, cfg)
    assert len(calm) == len(held) and not any(u for _, u in calm)


def test_recent_windows_are_bounded_and_kept_a_grace_after_the_leg_ends() -> None:
    recent = RecentWindows(recent_s=10, grace_s=0.05)
    for end in range(3, 100):
        recent.add("c", "customer", WindowResult("c:customer", end - 3, end, None, None, 0.0, np.zeros(2048, np.float32)))
    assert [w.end_s for w in recent.windows("c", "customer")] == list(range(89, 100))
    assert recent.nbytes() == 11 * 2048 * 4
    bus = EventBus()
    recent.sink(bus.make_event("call.ended", "c", "customer", reason="eof", summary={}))
    assert len(recent.windows("c", "customer")) == 11  # a verdict just after hang-up still finds them
    time.sleep(0.1)
    recent.sink(bus.make_event("call.ended", "other", "customer", reason="eof", summary={}))
    assert recent.windows("c", "customer") == []


def row(call_id: str, subject: str, start: float, upset: bool, ts: float) -> Row:
    return Row(call_id, "customer", subject, "confirmed" if upset else "dismissed", "supervisor", ts, start, start + 3,
               upset, np.full(4, start, np.float32))


def test_store_is_private_replaces_a_subject_newest_verdict_wins_deletes_and_expires(tmp_path: Path) -> None:
    path = tmp_path / "state" / "learning" / "v.sqlite3"
    store = FeatureStore(path, retention_days=1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    now = time.time()
    store.record([row("a", "e1", s, True, now - 10) for s in (0, 1, 2)])
    store.record([row("a", "call", s, False, now - 5) for s in (1, 2, 3)])  # the call marked calm later
    store.record([row("b", "e2", 0, True, now - 3 * 86400)])  # past the retention
    store.record([row("c", "e3", 0, True, now), row("c", "e3", 1, True, now)])
    store.record([row("c", "e3", 0, False, now)])  # a second verdict on e3 replaces the first
    kept = store.load()
    assert list(kept.calls) == ["a", "a", "a", "a", "b", "c"]
    assert list(kept.upset) == [True, False, False, False, True, False]
    assert kept.features.shape == (6, 4) and kept.features.dtype == np.float32
    assert store.purge() == 1 and store.counts()["calls"] == 2
    assert store.delete_call("a") == 6 and list(store.load().calls) == ["c"]


async def test_recorder_keeps_a_verdicts_windows_and_nothing_before_one(tmp_path: Path) -> None:
    cfg = LearningConfig(store_path=str(tmp_path / "v.sqlite3"), lead_s=2)
    recent = RecentWindows(300, 600)
    for end in range(3, 30):
        recent.add("c", "customer", WindowResult("c:customer", end - 3, end, None, None, 0.0, np.ones(8, np.float32)))
    recorder = VerdictRecorder(cfg, recent)
    bus = EventBus()
    recorder.sink(bus.make_event("score", "c", "customer"))
    await recorder.drain()
    assert not (tmp_path / "v.sqlite3").exists() and recorder.delete_call("c") == 0
    recorder.sink(bus.make_event("feedback", "c", "customer", verdict="confirmed", by="supervisor", escalation_id="e",
                                 raised_at=20.0, cleared_at=25.0))
    await recorder.drain()
    assert recorder.store.counts() == {"calls": 1, "windows": 8, "upset_windows": 8}
    recorder.close()
