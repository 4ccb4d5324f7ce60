"""What the PBX reads of an ARI call's escalations (real Asterisk, shipped [from-pstn] and [emovoice-after]):
the customer's alert is not overwritten by the agent's talk-over cue clearing, the cue does not flap, the
Setvars are few and none goes to a hung-up channel; the answering agent's page gets the call's start."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.conftest import running

from .asterisk import Asterisk
from .test_ami import agent_feed
from .test_ari_path import CUSTOMER_VOICE, agent_wav, ari_daemon, call, finished, of_type, start_pbx

AFTER = re.compile(r"^\s*EmoVoice: call (\S*) customer (\S*) agent (\S*)$", re.M)  # the Verbose line itself


async def test_variables_per_role_and_worst_active_state_reach_the_dialplan_few_times(
        tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk, agent_wav(tmp_path / "agent"))
    received: list[dict] = []
    with running(ari_daemon(tmp_path / "daemon", asterisk)) as daemon:
        await asyncio.to_thread(asterisk.wait, lambda: "AMI connected" in daemon.stderr_path.read_text(), "AMI")
        feed = asyncio.create_task(agent_feed(daemon, "1001", received))
        caller = call(tmp_path / "sipp", asterisk, len(CUSTOMER_VOICE) / 8000 + 2)
        await asyncio.to_thread(finished, caller, "tapped call")
        events = await asyncio.to_thread(daemon.wait_for, lambda evs: len(of_type(evs, "call.ended")) == 2, 60)
        await asyncio.sleep(1.0)  # what the agent's socket still gets
        feed.cancel()
    log = daemon.stderr_path.read_text()
    (ended,) = of_type(events, "call.ended")[:1]
    hung_up = ended["ts"]
    raised = of_type(events, "escalation.raised")
    cues = [e for e in raised if e["reason"] == "agent_talk_over_upset_customer"]
    cleared = of_type(events, "escalation.cleared")
    call_s = max(e["summary"]["duration_s"] for e in of_type(events, "call.ended"))
    print(f"ARI: {len(raised)} raised ({len(cues)} talk-over cues) and {len(cleared)} cleared in {call_s} s; "
          f"{log.count(' set on ')} Setvars")

    # 7: each role its own variable, and the worst *active* state, read by the dialplan after the call
    (after,) = AFTER.findall(asterisk.console())
    customer = [e for e in events if e["type"].startswith("escalation.") and e["role"] == "customer"]
    assert customer and customer[-1]["type"] == "escalation.raised", "the customer's anger never escalated"
    assert after[1] == customer[-1]["severity"] and after[0] == f"customer:{after[1]}", after
    assert after[2] in ("", "watch", "cleared"), after

    # 8: the talk-over cue at most once per cooldown (30 s), never a negative duration, few Setvars, none late
    assert len(cues) <= 1 + call_s // 30, [(e["at"]) for e in cues]
    assert all(e["duration_s"] >= 0 for e in cleared), [e["duration_s"] for e in cleared]
    assert log.count(" set on ") <= 8, log.count(" set on ")
    assert " not set on " not in log  # no Setvar to a channel that had hung up
    assert all(e["ts"] <= hung_up + 5 for e in raised)

    # 11: the queue member's page gets the call's start of both legs, though the call started before it answered
    assert {m["role"] for m in received if m["type"] == "call.started"} == {"customer", "agent"}, \
        [m["type"] for m in received]
