"""The blocking AudioSocket() step (extensions.conf Path 3, [emovoice-audiosocket]) on a real Asterisk with the
daemon up: one mixed leg, its escalation set on the caller's channel through AMI, gone when the caller hangs up."""
from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import running

from .asterisk import Asterisk
from .callflow import (AGENT_VOICE, CALL_TIMEOUT_S, alert_latency, ami_config, ami_connects, record, start_call,
                       start_pbx, tap_daemon)
from .phones import CALLER, agent_phone


def test_ivr_step_scores_one_mixed_leg_and_the_pbx_gets_the_escalation(tmp_path: Path, asterisk: Asterisk) -> None:
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    daemon, ports = tap_daemon(tmp_path / "daemon", overrides=ami_config(asterisk))
    with running(daemon):
        start_pbx(asterisk, ports, agent)
        asterisk.wait(lambda: ami_connects(daemon), "AMI connected")
        caller = start_call(tmp_path / "caller", asterisk, "200")
        variable = asterisk.wait(lambda: asterisk.variable(f"PJSIP/{CALLER}-", "EMOVOICE_ESCALATION"),
                                 "EMOVOICE_ESCALATION on the caller's channel", CALL_TIMEOUT_S)
        assert caller.wait(CALL_TIMEOUT_S) == 0, caller.log()  # hung up during the IVR step
        hung_up = time.time()
        events = daemon.wait_for(lambda evs: any(e["type"] == "call.ended" for e in evs), timeout=60)
        asterisk.wait(lambda: not asterisk.channels(), "the caller's channel gone", 30)
        channels_gone = time.time() - hung_up
    agent.stop()
    assert variable == "mixed:alert"
    assert [e["role"] for e in events if e["type"] == "call.started"] == ["mixed"]
    ended = next(e for e in events if e["type"] == "call.ended")
    onset, alert = alert_latency(events, "mixed")
    assert 0 < alert - onset < 10
    record("audiosocket_app", {"roles": ["mixed"], "onset_s": onset, "alert_s": alert, "pbx_variable": variable,
                               "end_reason": ended["reason"], "call_ended_after_bye_s": round(ended["ts"] - hung_up, 2),
                               "channels_gone_after_bye_s": round(channels_gone, 2)})
