"""Acceptance, simulator to agent page: a neutral minute then an angry stretch raises exactly one
alert, at most 2 s after the smoothed NEGATIVE crosses the entry threshold, and it clears after
the calm stretch.

The daemon is a real subprocess (``emovoice-daemon run``), the call is played by the simulator
over AudioSocket (4x real time), the agent page runs in headless Chromium. No trained model
exists yet, so the daemon scores with the scripted ToneClassifier (tests/escalation/scripted.py)
injected through the engine's Classifier interface.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from emovoice_daemon.config import EscalationConfig
from emovoice_daemon.tools.simulate import play_call
from tests.conftest import DaemonProcess

from tests.support.browser import Browser
from tests.support.scripted_daemon import AGENT_TOKEN, post_json
from tests.support.scripted import tone_call

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SPEED = 4.0
PROMPT = "document.querySelector('.prompt.alert .phrase')?.textContent"


async def test_neutral_minute_then_angry_stretch_alerts_agent_page_once_and_clears(
        scripted_daemon: DaemonProcess) -> None:
    d = scripted_daemon
    call_id = str(uuid.uuid4())
    assert post_json(d, "/agent/bind", {"call_id": call_id, "agent": "1001"})[0] == 200
    pcm = tone_call([("calm", 60), ("angry", 25), ("calm", 25)])

    async with Browser() as browser:
        await browser.goto(f"http://127.0.0.1:{d.api_port}/agent/#agent=1001&token={AGENT_TOKEN}")
        await browser.wait_for("document.getElementById('status').textContent === 'agent 1001'")
        call = asyncio.create_task(play_call("127.0.0.1", d.audiosocket_port, pcm, call_id, speed=SPEED))
        phrase = await browser.wait_for(PROMPT, timeout=60, poll=0.05)
        prompt_seen = time.time()
        await browser.screenshot(ARTIFACTS / "acceptance_agent_alert.png")
        assert "acknowledge" in phrase
        await browser.wait_for("!!document.querySelector('.prompt.cleared')", timeout=60)
        await browser.screenshot(ARTIFACTS / "acceptance_agent_cleared.png")
        assert (await call).error == ""

    events = d.wait_for(lambda evs: any(e["type"] == "call.ended" and e["call_id"] == call_id for e in evs))
    mine = [e for e in events if e["call_id"] == call_id]
    raised = [e for e in mine if e["type"] == "escalation.raised"]
    cleared = [e for e in mine if e["type"] == "escalation.cleared"]
    assert [(e["severity"]) for e in raised] == ["alert"], raised
    assert len(cleared) == 1 and cleared[0]["at"] > 85.0

    enter = EscalationConfig().enter
    crossing = next(e for e in mine if e["type"] == "score" and e["negative_smoothed"] >= enter)
    assert crossing["window"]["end"] > 60.0  # the neutral minute raised nothing
    assert 0.0 <= raised[0]["at"] - crossing["window"]["end"] <= 2.0
    # wall clock: the page showed the prompt within 2 s of the crossing window being scored
    assert prompt_seen - crossing["ts"] <= 2.0
    assert prompt_seen - raised[0]["ts"] <= 1.0

    status, body = d.get(f"/calls/{call_id}", d.token)
    assert status == 200
    summary = json.loads(body)["legs"][0]["summary"]
    assert summary["escalations"] == 1 and summary["escalation_log"][0]["severity"] == "alert"
    assert summary["class_share"]["NEGATIVE"] > 0.15 and summary["class_share"]["NEUTRAL"] > 0.6
    ended = next(e for e in mine if e["type"] == "call.ended")
    assert ended["summary"]["timeline"]["t"][-1] >= 109.0
