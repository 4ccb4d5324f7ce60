"""Supervisor wallboard: the /supervisor/ws feed (auth, snapshot) and the page in headless Chromium."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from emovoice_daemon.outputs.api import ApiContext, build_app
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.history import CallHistory
from emovoice_daemon.outputs.supervisor import POINTS_MAX, SupervisorBoard

from tests.support.browser import Browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "api-token"


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def listened() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
async def client(bus: EventBus, listened: list[tuple[str, str, str]]):
    history = CallHistory(":memory:")
    board = SupervisorBoard(TOKEN, listen=True)
    bus.add_sink(history.sink)
    bus.add_sink(board.sink)

    async def listen_in(call_id: str, supervisor: str, mode: str) -> str:
        listened.append((call_id, supervisor, mode))
        return "PJSIP/1001-00000001"

    writer = asyncio.create_task(history.run())
    app = build_app(ApiContext(TOKEN, False, bus, lambda: {"status": "ok", "device": "cpu", "cpus": 2},
                               history, None, listen_in, board))
    async with TestClient(TestServer(app)) as c:
        yield c
    writer.cancel()


def start(bus: EventBus, call_id: str, *roles: str, ago: float = 0.0, **meta: str) -> None:
    for role in roles:
        event = bus.make_event("call.started", call_id, role, source="ari", meta=meta, model={})
        event["ts"] -= ago
        bus.publish(event)


def score(bus: EventBus, call_id: str, role: str, t: float, negative: float) -> None:
    probs = {"NEGATIVE": negative, "NEUTRAL": 1 - negative, "POSITIVE": 0.0}
    bus.publish(bus.make_event("score", call_id, role, window={"start": t - 3, "end": t}, probs=probs,
                               label="NEGATIVE" if negative > .5 else "NEUTRAL", negative_smoothed=negative,
                               lag_ms=40, model={}))


def raise_(bus: EventBus, call_id: str, role: str, severity: str, at: float) -> None:
    bus.publish(bus.make_event("escalation.raised", call_id, role, severity=severity, reason="negative above threshold",
                               at=at, negative_smoothed=0.8))


def end(bus: EventBus, call_id: str, role: str, duration: float) -> None:
    timeline = [{"t": float(t), "negative": 0.5, "smoothed": min(1.0, t / duration)} for t in range(1, int(duration))]
    bus.publish(bus.make_event("call.ended", call_id, role, reason="hangup", summary={
        "duration_s": duration, "windows_scored": len(timeline), "peak_negative": 1.0, "escalations": 1,
        "escalation_log": [{"at": 5.0, "severity": "alert", "reason": "negative above threshold",
                            "cleared_at": 9.0}], "timeline": timeline}))


async def receive(ws) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == WSMsgType.TEXT, msg
    return msg.json()


@pytest.mark.parametrize("auth", [None, {"type": "auth", "token": "wrong"}, {"type": "auth"}, "not json"])
async def test_feed_refuses_a_missing_or_wrong_token(client: TestClient, auth: Any) -> None:
    ws = await client.ws_connect("/supervisor/ws?token=" + TOKEN)  # a token in the URL is not accepted
    if auth is not None:
        await (ws.send_json(auth) if isinstance(auth, dict) else ws.send_str(auth))
    else:
        await ws.send_json({"type": "hello"})
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == WSMsgType.CLOSE and ws.close_code == 4401


async def test_feed_sends_the_live_calls_then_their_events(client: TestClient, bus: EventBus) -> None:
    start(bus, "c1", "customer", "agent", agent="1001", queue="support")
    score(bus, "c1", "customer", 3.0, 0.4)
    raise_(bus, "c1", "customer", "alert", 3.0)
    bus.publish(bus.make_event("call.dtmf", "c1", "customer", digit="1"))  # not the board's: not sent
    ws = await client.ws_connect("/supervisor/ws", headers={"Authorization": f"Bearer {TOKEN}"})
    hello = await receive(ws)
    assert hello["type"] == "hello" and hello["listen"] is True
    [call] = hello["calls"]
    assert call["meta"] == {"agent": "1001", "queue": "support"} and set(call["legs"]) == {"customer", "agent"}
    assert call["legs"]["customer"]["points"] == [[3.0, 0.4]]
    assert [(m["severity"], m.get("cleared_at")) for m in call["marks"]] == [("alert", None)]
    score(bus, "c1", "agent", 4.0, 0.1)
    assert (await receive(ws))["type"] == "score"


def test_a_long_call_keeps_a_bounded_timeline_at_a_coarser_resolution() -> None:
    bus, board = EventBus(), SupervisorBoard(TOKEN, listen=False)
    bus.add_sink(board.sink)
    start(bus, "long", "mixed")
    for t in range(1, 3 * POINTS_MAX):
        score(bus, "long", "mixed", float(t), 0.9 if t == 700 else 0.1)
    points = board.calls["long"].legs["mixed"].points
    assert len(points) <= POINTS_MAX and points[-1][0] == 3 * POINTS_MAX - 1
    assert max(v for _, v in points) == 0.9  # merged points keep their maximum


async def test_wallboard_in_headless_chromium(client: TestClient, bus: EventBus,
                                              listened: list[tuple[str, str, str]]) -> None:
    page = await client.get("/supervisor/")
    assert page.status == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    async with Browser() as browser:
        await browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=760, deviceScaleFactor=1,
                           mobile=False)
        await browser.goto(str(client.make_url("/supervisor/")) + "#token=" + TOKEN + "&supervisor=alice")
        await browser.wait_for("document.getElementById('status').textContent === 'connected'")
        assert await browser.js("location.hash") == ""  # the token does not stay in the address bar
        rows = "[...document.querySelectorAll('#rows tr')]"
        start(bus, "calm-call", "customer", "agent", ago=200, agent="1002", queue="billing")
        start(bus, "hot-call", "customer", "agent", ago=95, agent="1001", queue="support")
        start(bus, "held-call", "mixed", ago=40, agent="1003")
        await browser.wait_for(f"{rows}.length === 3")  # rows appear
        hot = f"{rows}.find(r => r.dataset.callId === 'hot-call')"
        assert await browser.wait_for(f"{hot}.querySelector('.time').textContent") == "1:35"
        for t in range(3, 94):
            score(bus, "calm-call", "customer", t + 100, 0.15 + 0.1 * abs((t % 40) - 20) / 20)
            score(bus, "calm-call", "agent", t + 100, 0.08 + 0.05 * (t % 7) / 7)
            score(bus, "hot-call", "customer", t, min(0.85, 0.12 + 0.0001 * t * t))
            score(bus, "hot-call", "agent", t, 0.1 + 0.2 * (60 <= t <= 66))
            if t == 60:
                bus.publish(bus.make_event("cue", "hot-call", "agent", cue="talk_over", at=58.5))
            if t == 70:
                raise_(bus, "hot-call", "customer", "watch", 70.0)
        bus.publish(bus.make_event("cue", "calm-call", "agent", cue="long_silence", at=150.0))
        await browser.wait_for(f"{hot}.querySelector('.cust').textContent === 'watch'")  # and update
        assert await browser.js(f"{hot}.querySelector('.cues').textContent") == "T×1 "
        for t in range(3, 30):
            score(bus, "held-call", "mixed", t, 0.05)
        bus.publish(bus.make_event("call.hold", "held-call", "mixed", on_hold=True, at=35.0))
        await browser.wait_for(f"{rows}.find(r => r.dataset.callId === 'held-call')"
                               ".querySelector('.cust').textContent === 'on hold'")
        raised = time.monotonic()
        raise_(bus, "hot-call", "customer", "alert", 90.0)
        await browser.wait_for(f"{rows}[0].dataset.callId === 'hot-call' && {rows}[0].classList.contains('alert')",
                               poll=0.05)
        assert time.monotonic() - raised < 1.0  # an alert turns its row red (and first) within a second
        assert await browser.js("getComputedStyle(document.querySelector('#rows tr.alert')).backgroundColor") \
            == "rgb(229, 72, 77)"

        await browser.js(f"{rows}[0].querySelector('.time').click()")
        await browser.wait_for("!document.getElementById('timeline').hidden")
        assert await browser.js("document.getElementById('tl-source').textContent") == "live"
        inked = ("(() => { const c = document.getElementById('tl-canvas'); const d = c.getContext('2d')"
                 ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
                 " n += d[i] > 0; return n; })()")
        assert await browser.wait_for(inked) > 2000  # the timeline is drawn: lines, the alert band, the axes
        shot = await browser.screenshot(ARTIFACTS / "wallboard.png")
        assert shot.stat().st_size > 20000

        for mode in ("listen", "whisper"):
            await browser.js(f"{rows}[0].querySelector('button[data-mode={mode}]').click()")
            await browser.wait_for(f"document.getElementById('message').textContent.includes('{mode}: alice')")
        assert listened == [("hot-call", "alice", "listen"), ("hot-call", "alice", "whisper")]

        end(bus, "hot-call", "customer", 95.0)
        end(bus, "hot-call", "agent", 95.0)
        await browser.wait_for("document.getElementById('tl-source').textContent === 'from history'", timeout=10)
        assert await browser.wait_for(inked) > 2000
        assert await browser.wait_for("document.querySelectorAll('#recent li').length === 1")


@pytest.mark.parametrize("fragment", ["#token=wrong", ""])
async def test_page_with_a_wrong_or_no_token_asks_for_one(client: TestClient, fragment: str) -> None:
    async with Browser() as browser:
        await browser.goto(str(client.make_url("/supervisor/")) + fragment)
        await browser.wait_for("!document.getElementById('login').hidden")
        assert await browser.js("document.querySelectorAll('#rows tr').length") == 0
        if fragment:
            assert await browser.js("document.getElementById('status').textContent") == "wrong token"


def test_the_agent_who_answered_a_queue_call_joins_its_row() -> None:
    bus, board = EventBus(), SupervisorBoard(TOKEN, listen=False)
    bus.add_sink(board.sink)
    start(bus, "q1", "customer", queue="support")
    bus.publish(bus.make_event("call.agent", "q1", "customer", agent="1001"))
    assert board.calls["q1"].meta == {"queue": "support", "agent": "1001"}
