"""SIP path against the real Asterisk: the daemon registers as the shipped `emovoice` endpoint, stays
Reachable through qualify, and a real SIPp caller sent through `Gosub(emovoice-sip,7000,1(...))`
is scored; with the daemon down, TERMed or KILLed the caller's call still completes."""
from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import numpy as np

from emovoice_daemon.tools.demo import ANGRY_CLIPS, compose
from tests.conftest import DaemonProcess, free_port, running, start_daemon

from .asterisk import Asterisk, free_udp_block, snippet
from .callflow import AMI_SECRET, ami_config
from .phones import Phone, caller_phone, endpoints

SECRET = "sip-test-secret"
QUALIFY_S = 2
CALLER_VOICE, ONSET_S = compose(ANGRY_CLIPS)  # the demo's CREMA-D caller: calm, angry from ONSET_S (~10 s)
# The caller's dialplan: EmoVoice listens for 60 s at most, then the call goes on (Echo) whether
# or not EmoVoice took it.
PHONES = """
[phones]
exten => 100,1,Answer()
 same => n,Gosub(emovoice-sip,7000,1(60))
 same => n,Verbose(1,caller went on after EmoVoice: ${DIALSTATUS})
 same => n,Echo()
"""


def start_pbx(asterisk: Asterisk, extra_dialplan: str = "") -> Asterisk:
    pjsip = snippet("pjsip.conf", {"bind = 127.0.0.1:5060": f"bind = 127.0.0.1:{asterisk.sip_port}",
                                   "change-me-to-a-long-random-secret": SECRET,
                                   "qualify_frequency = 30": f"qualify_frequency = {QUALIFY_S}"})
    manager = snippet("manager.conf", {"port = 5038": f"port = {asterisk.ami_port}",
                                       "secret = change-me-to-a-long-random-secret": f"secret = {AMI_SECRET}"})
    return asterisk.start({"pjsip.conf": pjsip + endpoints("phones", {}), "manager.conf": manager,
                           "extensions.conf": snippet("extensions.conf") + PHONES + extra_dialplan})


def start_sip_daemon(workdir: Path, asterisk: Asterisk) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    low, high = free_udp_block(10)
    return start_daemon(workdir, {"audiosocket": {"enabled": False},
                                  "sip": {"enabled": True, "server": f"127.0.0.1:{asterisk.sip_port}",
                                          "password": SECRET, "port": free_port(socket.SOCK_DGRAM),
                                          "rtp_port_low": low, "rtp_port_high": high}, **ami_config(asterisk)})


def contact_status(asterisk: Asterisk) -> str:
    """The emovoice contact's status column (Avail, Unavail, ...), '' while none is registered."""
    for line in asterisk.cli("pjsip show contacts").splitlines():
        if "Contact:" in line and "emovoice/" in line:
            return line.split()[3]
    return ""


def caller_voice(seconds: float) -> np.ndarray:
    """The first ``seconds`` of CALLER_VOICE, padded with silence."""
    voice = np.zeros(int(seconds * 8000), np.int16)
    part = CALLER_VOICE[:len(voice)]
    voice[:len(part)] = part
    return voice


def completed(caller: Phone, what: str) -> None:
    assert caller.wait(180) == 0, f"{what}: the caller's call did not complete\n{caller.log()}"


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def test_registered_endpoint_stays_reachable_and_a_dialled_call_is_scored(tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk)
    with running(start_sip_daemon(tmp_path / "daemon", asterisk)) as daemon:
        asterisk.wait(lambda: contact_status(asterisk) == "Avail", "emovoice contact Reachable", 30)
        for _ in range(4):  # several qualify intervals: pyVoIP alone never answered OPTIONS
            time.sleep(QUALIFY_S)
            assert contact_status(asterisk) == "Avail", asterisk.cli("pjsip show contacts")
        caller = caller_phone(tmp_path / "caller", asterisk.sip_port, "100",
                              caller_voice(len(CALLER_VOICE) / 8000 + 2))
        (channel,) = asterisk.wait(lambda: [c for c in asterisk.channels() if c.startswith("PJSIP/5551234-")],
                                   "the caller's channel")
        unique_id = re.search(r"UniqueID: (\S+)", asterisk.cli(f"core show channel {channel}")).group(1)
        escalation = asterisk.wait(lambda: asterisk.variable(channel, "EMOVOICE_ESCALATION"),
                                   "EMOVOICE_ESCALATION on the caller's channel (AMI Setvar) during the call", 120)
        completed(caller, "scored call")
        events = daemon.wait_for(lambda evs: of_type(evs, "call.ended"), timeout=60)
    (started,), (ended,) = of_type(events, "call.started"), of_type(events, "call.ended")
    assert started["source"] == "sip" and started["role"] == "customer" and started["meta"]["codec"] == "ulaw"
    assert started["call_id"] == unique_id  # the leg is the caller's call (X-EmoVoice-Call)
    assert escalation.startswith("customer:")
    assert ended["reason"] == "hangup" and ended["summary"]["windows_scored"] >= 5
    raised = of_type(events, "escalation.raised")
    assert raised and raised[0]["at"] > ONSET_S - 1.0, "no escalation, or one before the anger started"
    print(f"SIP: anger onset {ONSET_S:.1f} s into the caller's audio, first alert at leg time {raised[0]['at']} s")


def test_daemon_down_the_call_goes_on(tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk)
    completed(caller_phone(tmp_path / "caller", asterisk.sip_port, "100", caller_voice(4)), "daemon down")
    assert "caller went on after EmoVoice: CHANUNAVAIL" in asterisk.console()


def test_term_and_kill_mid_call_leave_the_call_up_and_the_restarted_daemon_scores_again(
        tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with running(start_sip_daemon(tmp_path / sig.name, asterisk)) as daemon:
            asterisk.wait(lambda: contact_status(asterisk) == "Avail", "emovoice contact Reachable", 30)
            caller = caller_phone(tmp_path / f"caller-{sig.name}", asterisk.sip_port, "100", caller_voice(15))
            daemon.wait_for(lambda evs: of_type(evs, "score"), timeout=60)
            daemon.proc.send_signal(sig)
            daemon.proc.wait(30)
            completed(caller, f"{sig.name} mid-call")
            ended = of_type(daemon.events(), "call.ended")
            assert [e["reason"] for e in ended] == (["shutdown"] if sig == signal.SIGTERM else [])
    with running(start_sip_daemon(tmp_path / "after", asterisk)) as daemon:
        asterisk.wait(lambda: contact_status(asterisk) == "Avail", "emovoice contact Reachable again", 30)
        completed(caller_phone(tmp_path / "caller-after", asterisk.sip_port, "100", caller_voice(15)), "after restart")
        events = daemon.wait_for(lambda evs: of_type(evs, "call.ended"), timeout=60)
    assert of_type(events, "score") and of_type(events, "call.ended")[0]["reason"] == "hangup"
