"""Agent notifier: authentication, per-agent routing, phrasing, and the page in headless Chromium."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from emovoice_daemon.outputs import notifier as notifier_mod
from emovoice_daemon.config import ConfigError, NotifierConfig
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.notifier import AgentNotifier, load_agent_tokens

from tests.support.browser import Browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
API_TOKEN = "api-token"
PHRASES = {"watch": "Listen closely and acknowledge.", "alert": "Frustration rising - acknowledge and offer a concrete next step."}


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def agents(bus: EventBus) -> AgentNotifier:
    n = AgentNotifier(NotifierConfig(agents={"1001": "tok-1001", "1002": "tok-1002"}, phrases=PHRASES), API_TOKEN)
    bus.add_sink(n.sink)
    return n


@pytest.fixture
async def client(agents: AgentNotifier):
    app = web.Application()
    notifier_mod.add_routes(app, agents)
    async with TestClient(TestServer(app)) as c:
        yield c


def start(bus: EventBus, call_id: str, role: str = "mixed", **meta: str) -> None:
    bus.publish(bus.make_event("call.started", call_id, role, source="audiosocket", meta=meta, model={}))


def raise_(bus: EventBus, call_id: str, role: str = "mixed", severity: str = "alert") -> None:
    bus.publish(bus.make_event("escalation.raised", call_id, role, severity=severity, reason="negative above threshold",
                               at=12.0, negative_smoothed=0.8))


async def connect(client: TestClient, agent: str, token: str):
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "agent": agent, "token": token})
    return ws


async def next_json(ws) -> dict:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_agent_gets_only_its_own_calls_prompts_with_phrasing(client, bus: EventBus) -> None:
    ws1 = await connect(client, "1001", "tok-1001")
    ws2 = await connect(client, "1002", "tok-1002")
    assert (await next_json(ws1))["type"] == "hello"
    assert (await next_json(ws2))["type"] == "hello"
    start(bus, "call-a", agent="1001")
    start(bus, "call-b", agent="1002")
    raise_(bus, "call-a", severity="watch")
    raise_(bus, "call-b", severity="alert")
    bus.publish(bus.make_event("score", "call-a", "mixed", probs={}))  # scores are not for agents
    assert [(m["type"], m["call_id"]) for m in [await next_json(ws1), await next_json(ws1)]] == [
        ("call.started", "call-a"), ("escalation.raised", "call-a")]
    b = [await next_json(ws2), await next_json(ws2)]
    assert [(m["type"], m["call_id"]) for m in b] == [("call.started", "call-b"), ("escalation.raised", "call-b")]
    assert b[1]["phrase"] == PHRASES["alert"]
    bus.publish(bus.make_event("escalation.cleared", "call-a", "mixed", at=30.0, negative_smoothed=0.2, duration_s=18.0))
    assert (await next_json(ws1))["type"] == "escalation.cleared"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws2.receive(), 0.3)


async def test_bind_assigns_a_call_before_it_starts_and_agent_leg_escalations_are_not_prompts(
        client, bus: EventBus) -> None:
    unauth = await client.post("/agent/bind", json={"call_id": "x"})
    assert unauth.status == 400 and "expected JSON" in (await unauth.json())["error"]
    assert (await client.post("/agent/bind", json={"call_id": "c7", "agent": "1001"})).status == 200
    ws = await connect(client, "1001", "tok-1001")
    await next_json(ws)
    start(bus, "c7", "customer")
    start(bus, "c7", "agent")
    raise_(bus, "c7", "agent")      # the agent's own voice: for supervisors, not a prompt
    raise_(bus, "c7", "customer")
    got = [await next_json(ws) for _ in range(3)]
    assert [(m["type"], m["role"]) for m in got] == [
        ("call.started", "customer"), ("call.started", "agent"), ("escalation.raised", "customer")]


async def test_hello_names_the_agents_live_calls(client, bus: EventBus) -> None:
    start(bus, "c7", agent="1001", name="calm-then-angry")
    ws = await connect(client, "1001", "tok-1001")
    hello = await next_json(ws)
    assert hello["calls"] == ["c7"] and hello["names"] == {"c7": "calm-then-angry"}
    await ws.close()


async def test_reconnecting_agent_gets_active_prompts_in_hello(client, agents: AgentNotifier, bus: EventBus) -> None:
    start(bus, "c1", agent="1001")
    raise_(bus, "c1")
    ws = await connect(client, "1001", "tok-1001")
    hello = await next_json(ws)
    assert hello["calls"] == ["c1"] and [e["call_id"] for e in hello["active"]] == ["c1"]
    assert hello["active"][0]["phrase"] == PHRASES["alert"]
    bus.publish(bus.make_event("call.ended", "c1", "mixed", reason="hangup", summary={}))
    assert (await next_json(ws))["type"] == "call.ended"
    assert agents.calls == {}


@pytest.mark.parametrize("auth", [
    {"type": "auth", "agent": "1001", "token": "tok-1002"},   # another agent's token
    {"type": "auth", "agent": "9999", "token": ""},
    {"type": "hello"},
    "not json",
])
async def test_bad_credentials_close_with_4401(client, auth) -> None:
    ws = await client.ws_connect("/agent/ws")
    await (ws.send_str(auth) if isinstance(auth, str) else ws.send_json(auth))
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == WSMsgType.CLOSE and ws.close_code == 4401


async def test_header_auth_and_api_token_work_for_non_browser_clients(client, bus: EventBus) -> None:
    ws = await client.ws_connect("/agent/ws?agent=1002", headers={"Authorization": "Bearer tok-1002"})
    assert (await next_json(ws))["agent"] == "1002"
    sup = await client.ws_connect("/agent/ws?agent=1001", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert (await next_json(sup))["agent"] == "1001"
    bad = await client.ws_connect("/agent/ws?agent=1001", headers={"Authorization": "Bearer tok-1002"})
    await asyncio.wait_for(bad.receive(), 5)
    assert bad.close_code == 4401


def test_agents_file_is_read_and_bad_file_is_a_config_error(tmp_path: Path) -> None:
    good = tmp_path / "agents.yaml"
    good.write_text("'1001': secret-a\n'2002': secret-b\n")
    assert load_agent_tokens(NotifierConfig(agents={"1001": "old"}, agents_file=str(good))) == {
        "1001": "secret-a", "2002": "secret-b"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping agent id -> token"):
        load_agent_tokens(NotifierConfig(agents_file=str(bad)))
    with pytest.raises(ConfigError, match="cannot read"):
        load_agent_tokens(NotifierConfig(agents_file=str(tmp_path / "missing.yaml")))


async def test_page_shows_the_prompt_in_headless_chromium(client, bus: EventBus) -> None:
    page = await client.get("/agent/")
    assert page.status == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    url = str(client.make_url("/agent/")) + "#agent=1001&token=tok-1001"
    async with Browser() as browser:
        await browser.goto(url)
        await browser.wait_for("document.getElementById('status').textContent === 'agent 1001'")
        assert await browser.js("location.hash") == ""  # the token does not stay in the address bar
        start(bus, "call-42", agent="1001")
        raise_(bus, "call-42", severity="alert")
        start(bus, "call-43", agent="1002")
        raise_(bus, "call-43", severity="watch")
        phrase = await browser.wait_for("document.querySelector('.prompt.alert .phrase')?.textContent")
        assert phrase == PHRASES["alert"]
        assert await browser.js("document.querySelectorAll('.prompt').length") == 1
        shot = await browser.screenshot(ARTIFACTS / "agent_prompt_alert.png")
        assert shot.stat().st_size > 5000
        bus.publish(bus.make_event("escalation.cleared", "call-42", "mixed", at=40, negative_smoothed=0.2,
                                   duration_s=28))
        await browser.wait_for("!!document.querySelector('.prompt.cleared')")
        await browser.screenshot(ARTIFACTS / "agent_prompt_cleared.png")


async def test_page_says_the_call_ended_not_that_the_caller_calmed_down(client, bus: EventBus) -> None:
    async with Browser() as browser:
        await browser.goto(str(client.make_url("/agent/")) + "#agent=1001&token=tok-1001")
        await browser.wait_for("document.getElementById('status').textContent === 'agent 1001'")
        start(bus, "call-44", agent="1001", name="calm-then-angry")
        raise_(bus, "call-44", severity="alert")
        await browser.wait_for("!!document.querySelector('.prompt.alert')")
        assert await browser.js("document.getElementById('calls').textContent") == "calm-then-angry"  # its meta name
        assert "call calm-then-angry" in await browser.js("document.querySelector('.prompt .meta').textContent")
        bus.publish(bus.make_event("call.ended", "call-44", "mixed", reason="hangup", summary={}))
        phrase = await browser.wait_for("document.querySelector('.prompt.ended .phrase')?.textContent")
        assert phrase == "The call ended."
        assert "calmer" not in await browser.js("document.getElementById('prompts').textContent")


async def test_page_says_when_the_caller_is_on_hold(client, bus: EventBus) -> None:
    async with Browser() as browser:
        await browser.goto(str(client.make_url("/agent/")) + "#agent=1001&token=tok-1001")
        await browser.wait_for("document.getElementById('status').textContent === 'agent 1001'")
        start(bus, "call-45", agent="1001", name="held")
        await browser.wait_for("document.getElementById('calls').textContent === 'held'")
        bus.publish(bus.make_event("call.hold", "call-45", "mixed", on_hold=True, at=12.0))
        await browser.wait_for("document.getElementById('calls').textContent === 'held (on hold)'")
        bus.publish(bus.make_event("call.hold", "call-45", "mixed", on_hold=False, at=30.0))
        await browser.wait_for("document.getElementById('calls').textContent === 'held'")


async def test_page_with_wrong_token_shows_login_form(client) -> None:
    async with Browser() as browser:
        await browser.goto(str(client.make_url("/agent/")) + "#agent=1001&token=wrong")
        await browser.wait_for("document.getElementById('status').textContent === 'wrong agent or token'")
        assert await browser.js("document.getElementById('login').hidden") is False
