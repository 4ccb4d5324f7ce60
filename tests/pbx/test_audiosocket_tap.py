"""The non-intrusive AudioSocket tap (extensions.conf Path 2) against a real Asterisk and SIP phones."""
from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import running

from .asterisk import Asterisk

from .callflow import AGENT_VOICE, alert_latency, place_call, record, start_pbx, tap_daemon
from .phones import agent_phone


def test_tap_scores_customer_and_agent_as_separate_legs_and_goes_with_the_call(
        tmp_path: Path, asterisk: Asterisk) -> None:
    daemon, ports = tap_daemon(tmp_path / "daemon")
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    with running(daemon):
        start_pbx(asterisk, ports, agent)
        assert place_call(tmp_path / "caller", asterisk) == 0
        hung_up = time.time()
        events = daemon.wait_for(lambda evs: sum(e["type"] == "call.ended" for e in evs) == 2, timeout=60)
        asterisk.wait(lambda: not asterisk.channels(), "every channel (call and taps) gone", 30)
        channels_gone = time.time() - hung_up
    agent.stop()

    started = [e for e in events if e["type"] == "call.started"]
    assert sorted(e["role"] for e in started) == ["agent", "customer"]
    assert len({e["call_id"] for e in started}) == 1 and all(e["source"] == "audiosocket" for e in started)
    raised = [e for e in events if e["type"] == "escalation.raised"]
    assert [e["role"] for e in raised] == ["customer"]  # the agent, calm throughout, never escalates
    customer = [e for e in events if e["type"] == "score" and e["role"] == "customer"]
    agent_scores = [e for e in events if e["type"] == "score" and e["role"] == "agent"]
    assert max(e["probs"]["NEGATIVE"] for e in agent_scores) < 0.3
    onset, alert = alert_latency(events, "customer")
    assert 0 < alert - onset < 10
    ended = [e for e in events if e["type"] == "call.ended"]
    assert {e["reason"] for e in ended} == {"eof"}
    record("tap", {"roles": sorted(e["role"] for e in started), "onset_s": onset, "alert_s": alert,
                   "severity": raised[0]["severity"], "windows": {"customer": len(customer), "agent": len(agent_scores)},
                   "call_ended_after_bye_s": round(max(e["ts"] for e in ended) - hung_up, 2),
                   "channels_gone_after_bye_s": round(channels_gone, 2)})
