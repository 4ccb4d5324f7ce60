"""Supervisor listen-in from emovoice-top (in tmux) on a real Asterisk: on the selected call, ``l`` rings
supervisor alice's phone (SIP, extension 2001) into ChanSpy of the customer's channel (q: both parties
heard, nothing said), ``w`` into ChanSpy of the agent's channel in whisper mode (only the agent hears her)."""
from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import DaemonProcess, running
from tests.support.tmux import Tmux

from .asterisk import Asterisk
from .callflow import AGENT_VOICE, CALL_TIMEOUT_S, ami_config, ami_connects, start_call, start_pbx, tap_daemon
from .phones import CALLER, agent_phone


def spies(asterisk: Asterisk) -> list[tuple[str, str]]:
    """(channel, ChanSpy data) of the supervisor phone's live channels running ChanSpy."""
    rows = [line.split("!") for line in asterisk.cli("core show channels concise").splitlines() if "!" in line]
    return [(r[0], r[6]) for r in rows if r[0].startswith("PJSIP/2001-") and r[5] == "ChanSpy"]


def post_listen(daemon: DaemonProcess, call_id: str, body: dict) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.api_port}/calls/{call_id}/listen",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {daemon.token}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_top_keys_ring_the_supervisor_into_listen_and_whisper(tmp_path: Path, asterisk: Asterisk) -> None:
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    supervisor = agent_phone(tmp_path / "alice2001", AGENT_VOICE, calls=2)
    daemon, ports = tap_daemon(tmp_path / "daemon", overrides=ami_config(asterisk, supervisors={"alice": "PJSIP/2001"}))
    with running(daemon):
        start_pbx(asterisk, ports, agent, {"2001": supervisor})
        await asyncio.to_thread(asterisk.wait, lambda: ami_connects(daemon), "AMI connected")
        term = Tmux(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "emovoice_daemon.tools.top", "--url", f"http://127.0.0.1:{daemon.api_port}",
                     "--token", daemon.token, "--refresh", "0.2", "--supervisor", "alice"])
        try:
            caller = start_call(tmp_path / "caller", asterisk, "100")
            events = await asyncio.to_thread(daemon.wait_for, lambda evs: sum(
                e["type"] == "call.started" for e in evs) == 2 and "answered by agent 1001" in daemon.stderr_path.read_text())
            call_id = events[0]["call_id"]
            assert post_listen(daemon, call_id, {"supervisor": "bob"}) == 404
            assert post_listen(daemon, call_id, {"supervisor": "alice", "mode": "barge"}) == 400
            await term.wait_for(lambda screen: call_id[:8] in screen)
            term.keys("j", "l")
            await term.wait_for(lambda screen: "listen: alice's phone rings" in screen)
            listen = await asyncio.to_thread(asterisk.wait, lambda: spies(asterisk), "alice's phone in ChanSpy")
            term.keys("w")
            await term.wait_for(lambda screen: "whisper: alice's phone rings" in screen)
            both = await asyncio.to_thread(asterisk.wait, lambda: len(spies(asterisk)) == 2 and spies(asterisk),
                                           "alice's second call in ChanSpy")
            assert await asyncio.to_thread(caller.wait, CALL_TIMEOUT_S) == 0, caller.log()
            await asyncio.to_thread(asterisk.wait, lambda: not asterisk.channels(), "every channel gone", 30)
        finally:
            term.kill()
    agent.stop()
    assert [data for _, data in listen] == [f"{listen[0][1].split(',')[0]},qE"]
    assert listen[0][1].startswith(f"PJSIP/{CALLER}-")
    whisper = next(data for channel, data in both if channel != listen[0][0])
    assert whisper.startswith("PJSIP/1001-") and whisper.endswith(",qwE")
    assert await asyncio.to_thread(supervisor.wait, 30) == 0, supervisor.log()  # both spy calls ended by BYE
