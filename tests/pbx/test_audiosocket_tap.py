"""The non-intrusive AudioSocket tap (extensions.conf Path 2) against a real Asterisk and SIP phones."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import running

from .asterisk import Asterisk
from .callflow import AGENT_VOICE, place_call, start_pbx, tap_daemon
from .phones import agent_phone


def test_tap_scores_customer_and_agent_as_separate_legs_and_goes_with_the_call(
        tmp_path: Path, asterisk: Asterisk) -> None:
    daemon, ports = tap_daemon(tmp_path / "daemon")
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    with running(daemon):
        start_pbx(asterisk, ports, agent)
        assert place_call(tmp_path / "caller", asterisk) == 0
        events = daemon.wait_for(lambda evs: sum(e["type"] == "call.ended" for e in evs) == 2, timeout=60)
        asterisk.wait(lambda: not asterisk.channels(), "every channel (call and taps) gone", 30)
    agent.stop()

    started = [e for e in events if e["type"] == "call.started"]
    assert sorted(e["role"] for e in started) == ["agent", "customer"]
    assert len({e["call_id"] for e in started}) == 1 and all(e["source"] == "audiosocket" for e in started)
    raised = [e for e in events if e["type"] == "escalation.raised"]
    assert [e["role"] for e in raised] == ["customer"]  # the agent, calm throughout, never escalates
    customer = [e for e in events if e["type"] == "score" and e["role"] == "customer"]
    agent_scores = [e for e in events if e["type"] == "score" and e["role"] == "agent"]
    assert max(e["probs"]["NEGATIVE"] for e in agent_scores) < 0.3
    onset = next(e["window"]["end"] for e in customer if e["probs"]["NEGATIVE"] > 0.1)  # within 1 s after onset
    assert 0 < raised[0]["at"] - onset < 10
    ended = [e for e in events if e["type"] == "call.ended"]
    assert {e["reason"] for e in ended} == {"eof"}
