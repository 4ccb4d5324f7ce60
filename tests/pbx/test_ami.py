"""The AMI client against a real Asterisk: EMOVOICE_ESCALATION reaches the call's channel; a call to a queue
whose members 1001 and 1002 both ring, answered by 1001, shows its prompt on 1001's agent page (Chromium)
with no manual bind, and nothing on 1002's; reconnects."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.conftest import DaemonProcess, running
from tests.support.browser import Browser
from tests.support.scripted_daemon import AGENT_TOKEN

from .asterisk import Asterisk
from .callflow import AGENT_VOICE, CALL_TIMEOUT_S, ami_config, ami_connects, start_call, start_pbx, tap_daemon
from .phones import CALLER, agent_phone

PROMPT = "document.querySelector('.prompt.alert .phrase')?.textContent"


async def agent_feed(daemon: DaemonProcess, agent: str, received: list[dict]) -> None:
    """What ``agent``'s prompt socket receives (/agent/ws), appended to ``received`` until cancelled."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {daemon.token}"}) as session:
        async with session.ws_connect(f"http://127.0.0.1:{daemon.api_port}/agent/ws?agent={agent}") as ws:
            async for msg in ws:
                received.append(json.loads(msg.data))


async def test_queued_call_escalation_sets_channel_variable_and_prompts_the_answering_agent(
        tmp_path: Path, asterisk: Asterisk) -> None:
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    other = agent_phone(tmp_path / "agent1002", AGENT_VOICE, answer_ms=120_000)  # rings, never answers in time
    daemon, ports = tap_daemon(tmp_path / "daemon", overrides=ami_config(asterisk))  # up before the PBX: AMI retries
    to_1002: list[dict] = []
    with running(daemon):
        start_pbx(asterisk, ports, agent, {"1002": other})
        await asyncio.to_thread(asterisk.wait, lambda: ami_connects(daemon), "AMI connected")
        feed_1002 = asyncio.create_task(agent_feed(daemon, "1002", to_1002))
        async with Browser() as page:
            await page.goto(f"http://127.0.0.1:{daemon.api_port}/agent/#agent=1001&token={AGENT_TOKEN}")
            await page.wait_for("document.getElementById('status').textContent === 'agent 1001'")
            caller = start_call(tmp_path / "caller", asterisk, "100")
            phrase = await page.wait_for(PROMPT, timeout=CALL_TIMEOUT_S, poll=0.2)
            variable = await asyncio.to_thread(asterisk.wait, lambda: asterisk.variable(
                f"PJSIP/{CALLER}-", "EMOVOICE_ESCALATION"), "EMOVOICE_ESCALATION on the caller's channel")
        assert await asyncio.to_thread(caller.wait, CALL_TIMEOUT_S) == 0, caller.log()
        events = daemon.wait_for(lambda evs: sum(e["type"] == "call.ended" for e in evs) == 2, timeout=60)
        feed_1002.cancel()
    agent.stop()
    other.stop()
    assert "CANCEL" in other.log()  # 1002's phone rang too, and the queue cancelled it when 1001 answered
    assert [m["type"] for m in to_1002] == ["hello"]  # so 1002 got nothing of the call
    assert "acknowledge" in phrase.lower()
    assert variable == "customer:alert"
    call_id = next(e["call_id"] for e in events if e["type"] == "call.started")
    log = daemon.stderr_path.read_text()
    assert f"call {call_id} answered by agent 1001 (queue support)" in log
    assert "AMI connected" in log and "retrying" in log  # the daemon came up first and reconnected


def test_ami_reconnects_after_asterisk_restarts(tmp_path: Path, asterisk: Asterisk) -> None:
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    daemon, ports = tap_daemon(tmp_path / "daemon", overrides=ami_config(asterisk))
    with running(daemon):
        start_pbx(asterisk, ports, agent)
        asterisk.wait(lambda: ami_connects(daemon) == 1, "AMI connected", 30)
        asterisk.stop()
        start_pbx(asterisk, ports, agent)
        asterisk.wait(lambda: ami_connects(daemon) == 2, "AMI connected again after the restart", 30)
    agent.stop()
