"""The SIP extension fed by the ChanSpy originate line of extensions.conf (no X-EmoVoice-Call header): with AMI,
the escalation variables reach the spied caller's channel (real Asterisk, real SIPp caller, real model)."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import running

from .asterisk import Asterisk, snippet
from .phones import caller_phone
from .test_sip_path import CALLER_VOICE, caller_voice, completed, contact_status, of_type, start_pbx, start_sip_daemon

TALK = "\n[phones]\nexten => 101,1,Answer()\n same => n,Echo()\n"  # a call that never meets EmoVoice itself


def originate_line(spied: str) -> str:
    """The CLI line of extensions.conf [emovoice-sip], verbatim but for the spied channel."""
    line = re.search(r"^;\s+(channel originate PJSIP/emovoice .*)$", snippet("extensions.conf"), re.M).group(1)
    return line.replace("PJSIP/trunk-00000042", spied)


def test_chanspy_originated_sip_leg_sets_the_variables_on_the_spied_channel(tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk, extra_dialplan=TALK)
    with running(start_sip_daemon(tmp_path / "daemon", asterisk)) as daemon:
        asterisk.wait(lambda: contact_status(asterisk) == "Avail", "emovoice contact Reachable", 30)
        asterisk.wait(lambda: "AMI connected" in daemon.stderr_path.read_text(), "AMI connected")
        caller = caller_phone(tmp_path / "caller", asterisk.sip_port, "101", caller_voice(len(CALLER_VOICE) / 8000 + 2))
        (channel,) = asterisk.wait(lambda: [c for c in asterisk.channels() if c.startswith("PJSIP/5551234-")],
                                   "the caller's channel")
        asterisk.cli(originate_line(channel))
        daemon.wait_for(lambda evs: of_type(evs, "call.started"), timeout=30)
        escalation = asterisk.wait(lambda: asterisk.variable(channel, "EMOVOICE_ESCALATION"),
                                   "EMOVOICE_ESCALATION on the spied caller's channel", 120)
        customer = asterisk.variable(channel, "EMOVOICE_ESCALATION_CUSTOMER")
        completed(caller, "spied call")
    assert re.fullmatch(r"customer:(watch|alert)", escalation) and customer in ("watch", "alert"), (escalation, customer)
