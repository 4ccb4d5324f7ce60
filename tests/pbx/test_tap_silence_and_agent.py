"""The AudioSocket tap against a real Asterisk: both parties silent (no RTP at all) for longer than the idle
timeout keeps its tap; the queue member who answered shows in emovoice-top and the history; a daemon
killed after an escalation leaves a ``lost`` summary with the class shares and the escalation."""
from __future__ import annotations

import json
import signal
from pathlib import Path

from emovoice_daemon.tools.top import TopState
from tests.conftest import running
from tests.support.scripted import tone_call

from .asterisk import Asterisk
from .callflow import AGENT_VOICE, CALL_TIMEOUT_S, ami_config, ami_connects, start_pbx, tap_daemon
from .phones import agent_phone, caller_phone

IDLE_S = 3.0
QUIET = (4.0, 10.0)  # neither phone sends RTP in these seconds, twice the idle timeout (while one party talks,
AGENT_QUIET = (3.0, 11.0)  # Asterisk's ChanSpy fills the other's tap with silence): a hold, muted phones
VOICE = tone_call([("calm", QUIET[0]), ("calm", QUIET[1] - QUIET[0]), ("angry", 12), ("calm", 3)])


def of_type(events: list[dict], kind: str, role: str | None = None) -> list[dict]:
    return [e for e in events if e["type"] == kind and role in (None, e["role"])]


def test_tap_survives_a_silent_party_and_the_answering_agent_shows_in_top_and_history(
        tmp_path: Path, asterisk: Asterisk) -> None:
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE, unsent=AGENT_QUIET)
    daemon, ports = tap_daemon(tmp_path / "daemon", overrides={**ami_config(asterisk),
                                                               "audiosocket": {"idle_timeout_s": IDLE_S}})
    with running(daemon):
        start_pbx(asterisk, ports, agent)
        asterisk.wait(lambda: ami_connects(daemon), "AMI connected")
        caller = caller_phone(tmp_path / "caller", asterisk.sip_port, "100", VOICE, unsent=QUIET)
        assert caller.wait(CALL_TIMEOUT_S) == 0, caller.log()
        events = daemon.wait_for(lambda evs: len(of_type(evs, "call.ended")) == 2, timeout=60)
        call_id = of_type(events, "call.started")[0]["call_id"]
        status, body = daemon.get(f"/calls/{call_id}", daemon.token)
    agent.stop()
    ended = {e["role"]: e for e in of_type(events, "call.ended")}
    assert {e["reason"] for e in ended.values()} == {"eof"}, ended  # not idle_timeout during the quiet part
    assert of_type(events, "escalation.raised", "customer"), "the anger after the quiet part was never heard"
    assert "no complete frame" not in daemon.stderr_path.read_text()

    assert [e["agent"] for e in of_type(events, "call.agent")] == ["1001"]
    top = TopState()
    for event in events:
        top.apply(event)
    assert top.calls[call_id].meta["agent"] == "1001"  # emovoice-top's agent column
    assert status == 200 and json.loads(body)["meta"]["agent"] == "1001"  # GET /calls/{id}, which top seeds from


def test_killed_daemon_ends_the_call_lost_with_class_shares_and_its_escalation(
        tmp_path: Path, asterisk: Asterisk) -> None:
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    daemon, ports = tap_daemon(tmp_path / "daemon")
    with running(daemon):
        start_pbx(asterisk, ports, agent)
        caller = caller_phone(tmp_path / "caller", asterisk.sip_port, "100", tone_call([("calm", 4), ("angry", 20)]))
        daemon.wait_for(lambda evs: of_type(evs, "escalation.raised", "customer"), timeout=CALL_TIMEOUT_S)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(30)
    before = daemon.events()
    restarted, _ = tap_daemon(tmp_path / "daemon", ports)  # same directory: the killed run's event log
    with running(restarted):
        events = restarted.wait_for(lambda evs: len(of_type(evs, "call.ended")) == 2, timeout=60)
    caller.stop()
    agent.stop()
    lost = {e["role"]: e["summary"] for e in of_type(events, "call.ended")}
    assert {e["reason"] for e in of_type(events, "call.ended")} == {"lost"}
    customer = lost["customer"]
    scored = len(of_type(before, "score", "customer"))
    assert customer["windows_scored"] == scored and customer["class_share"]["NEGATIVE"] > 0
    assert abs(sum(customer["class_share"].values()) - 1) < 0.01
    assert customer["escalations"] == 1 and customer["escalation_log"][0]["severity"]
    assert lost["agent"]["escalations"] == 0 and "class_share" in lost["agent"]
    assert "ended (lost)" in restarted.stderr_path.read_text() and " 1 escalations" in restarted.stderr_path.read_text()
