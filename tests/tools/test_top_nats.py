"""Two call servers, one view: two daemons (sites lyon and paris) publish to a real nats-server;
``emovoice-top --nats`` (in tmux) shows the calls of both at once, and the hub gives one call history
(``/calls`` with each call's site), prompts an agent whose call is on either server and feeds the wallboard
(``/supervisor/ws``) of both sites, as each daemon feeds its own."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import yaml

from emovoice_daemon.tools.simulate import play_call
from tests.conftest import free_port, stop_daemon
from tests.support.nats_servers import NatsNode, wait_until
from tests.support.scripted import tone_call
from tests.support.scripted_daemon import AGENT_TOKEN, start_scripted_daemon
from tests.support.tmux import Tmux

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
HUB_TOKEN = "hub-token"


def start_hub(tmp_path: Path, nats_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = {"jetstream": {"servers": [nats_url]}, "api": {"port": port, "token": HUB_TOKEN},
              "history": {"path": str(tmp_path / "site-history.sqlite3")},
              "notifier": {"agents": {"1001": AGENT_TOKEN}}}
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))
    hub = subprocess.Popen([sys.executable, "-m", "emovoice_daemon.tools.cli", "hub", "-c", str(tmp_path / "hub.yaml")],
                           stderr=open(tmp_path / "hub.stderr", "wb"))
    wait_until(lambda: _get(port, "/health") is not None, "the hub never answered /health", 120)
    return hub, port


def _get(port: int, path: str, body: dict | None = None) -> dict | None:
    """GET (or POST ``body`` as JSON) with the hub's token; None when it does not answer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body and json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


async def _board(session: aiohttp.ClientSession, port: int, token: str) -> dict:
    """The wallboard's hello from ``/supervisor/ws`` (the token as its first message, as the page sends it)."""
    async with session.ws_connect(f"http://127.0.0.1:{port}/supervisor/ws") as ws:
        await ws.send_json({"type": "auth", "token": token})
        hello = json.loads((await ws.receive(timeout=5)).data)
    assert hello["type"] == "hello"
    return hello


async def test_top_and_hub_follow_two_daemons(tmp_path: Path) -> None:
    node = NatsNode("solo", tmp_path / "nats")
    node.start()
    daemons, hub, term = [], None, None
    try:
        for site in ("lyon", "paris"):
            (tmp_path / site).mkdir()
            daemons.append(start_scripted_daemon(tmp_path / site, {"jetstream": {
                "enabled": True, "servers": [node.url], "site": site}}))
        wait_until(lambda: sum("emovoice-daemon" in n for n in node.client_names()) == 2, "daemons never connected")
        hub, hub_port = start_hub(tmp_path, node.url)
        term = Tmux(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "emovoice_daemon.tools.top",
                     "--nats", node.url, "--site", "'*'", "--refresh", "0.2"])
        await term.wait_for(lambda s: "● connected" in s, 60)
        lyon_call, paris_call = str(uuid.uuid4()), str(uuid.uuid4())
        assert _get(hub_port, "/agent/bind", {"call_id": paris_call, "agent": "1001"}) == {
            "call_id": paris_call, "agent": "1001"}
        async with aiohttp.ClientSession() as session:
            agent = await session.ws_connect(f"http://127.0.0.1:{hub_port}/agent/ws?agent=1001",
                                             headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
            assert json.loads((await agent.receive(timeout=5)).data)["type"] == "hello"
            calls = [asyncio.create_task(play_call("127.0.0.1", daemons[0].audiosocket_port,
                                                   tone_call([("calm", 30)]), lyon_call)),
                     asyncio.create_task(play_call("127.0.0.1", daemons[1].audiosocket_port,
                                                   tone_call([("calm", 3), ("angry", 27)]), paris_call))]
            screen = await term.wait_for(lambda s: lyon_call[:8] in s and paris_call[:8] in s and "ALERT" in s, 45)
            assert "legs 2" in screen and "lyon" in screen and "paris" in screen
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "emovoice_top_two_daemons.txt").write_text(screen)
            prompt = await _next_of(agent, "escalation.raised")
            assert prompt["call_id"] == paris_call and prompt["site"] == "paris" and prompt["phrase"]
            hub_board = await _board(session, hub_port, HUB_TOKEN)
            assert hub_board["listen"] is False  # listen-in goes through the call's daemon
            sites = {c["call_id"]: c["meta"].get("site") for c in hub_board["calls"]}
            assert sites == {lyon_call: "lyon", paris_call: "paris"}
            paris = next(c for c in hub_board["calls"] if c["call_id"] == paris_call)
            assert any(m["type"] == "escalation.raised" for m in paris["marks"]) and paris["legs"]["mixed"]["points"]
            own_board = await _board(session, daemons[1].api_port, daemons[1].token)
            assert [c["call_id"] for c in own_board["calls"]] == [paris_call]
            for task in calls:
                task.cancel()
        for daemon in daemons:
            stop_daemon(daemon)  # ends the calls: call.ended reaches the hub's history
        wait_until(lambda: len([c for c in (_get(hub_port, "/calls") or {}).get("calls", []) if not c["live"]]) == 2,
                   "the hub's history never had both calls ended", 30)
        calls_by_id = {c["call_id"]: c for c in _get(hub_port, "/calls")["calls"]}
        assert calls_by_id[lyon_call]["meta"]["site"] == "lyon" and calls_by_id[paris_call]["meta"]["site"] == "paris"
        assert calls_by_id[paris_call]["escalations"] >= 1
    finally:
        if term is not None:
            term.kill()
        for daemon in daemons:
            stop_daemon(daemon)
        if hub is not None:
            hub.terminate()
            hub.wait(10)
        node.stop()


async def _next_of(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=deadline - time.monotonic())
        event = json.loads(msg.data)
        if event["type"] == kind:
            return event
    raise AssertionError(f"no {kind} on the agent socket")
