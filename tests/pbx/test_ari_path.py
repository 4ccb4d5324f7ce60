"""ARI path against the real Asterisk: the shipped [from-pstn] (Stasis, then Queue) with a SIPp caller and
an agent (a queue member that plays a recorded voice), the daemon snooping both directions over
ExternalMedia; teardown, TERM/KILL restarts and the daemon being down never cost the call."""
from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from base64 import b64encode
from pathlib import Path

import numpy as np
import soundfile as sf

from emovoice_daemon.tools.demo import ANGRY_CLIPS, CALM_CLIPS, compose
from tests.conftest import DaemonProcess, free_port, running, start_daemon

from .asterisk import Asterisk, snippet
from .callflow import AMI_SECRET, ami_config
from .phones import Phone, caller_phone, endpoints

SECRET = "ari-test-secret"
CUSTOMER_VOICE, ONSET_S = compose(ANGRY_CLIPS)  # the demo's CREMA-D caller: calm, angry from ONSET_S (~10 s)
AGENT_IN_S = ONSET_S + 4.0  # the agent (another actor, calm) talks over the angry customer from here
QUEUE = "[support]\nstrategy = ringall\ntimeout = 15\njoinempty = yes\nmember => Local/1001@agents/n,0,1001\n"


def customer_voice(seconds: float) -> np.ndarray:
    """The first ``seconds`` of CUSTOMER_VOICE, padded with silence."""
    voice = np.zeros(int(seconds * 8000), np.int16)
    part = CUSTOMER_VOICE[:len(voice)]
    voice[:len(part)] = part
    return voice


def agent_wav(workdir: Path) -> Path:
    """The agent's WAV for Playback(): silence until AGENT_IN_S, then the demo's calm actor."""
    workdir.mkdir(parents=True, exist_ok=True)
    calm, _ = compose(CALM_CLIPS)
    sf.write(workdir / "agent.wav", np.concatenate([np.zeros(int(AGENT_IN_S * 8000), np.int16), calm]), 8000,
             subtype="PCM_16")
    return workdir / "agent.wav"


def start_pbx(asterisk: Asterisk, agent_wav: Path) -> Asterisk:
    agents = (f"\n[agents]\nexten => 1001,1,Answer()\n same => n,Playback({agent_wav.with_suffix('')})\n"
              " same => n,Wait(120)\n")
    manager = snippet("manager.conf", {"port = 5038": f"port = {asterisk.ami_port}",
                                       "secret = change-me-to-a-long-random-secret": f"secret = {AMI_SECRET}"})
    return asterisk.start({"ari.conf": snippet("ari.conf", {"change-me-to-a-long-random-secret": SECRET}),
                           "manager.conf": manager,
                           "extensions.conf": snippet("extensions.conf") + agents, "queues.conf": QUEUE,
                           "pjsip.conf": asterisk.pjsip_conf(endpoints("from-pstn", {}))})


def ari_daemon(workdir: Path, asterisk: Asterisk) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return start_daemon(workdir, {"audiosocket": {"enabled": False}, "rtp": {"port": free_port(socket.SOCK_DGRAM)},
                                  "ari": {"enabled": True, "url": f"http://127.0.0.1:{asterisk.http_port}/ari",
                                          "password": SECRET}, **ami_config(asterisk)})


def call(workdir: Path, asterisk: Asterisk, seconds: float) -> Phone:
    """The SIPp caller dials into [from-pstn], talks for ``seconds``, hangs up."""
    return caller_phone(workdir, asterisk.sip_port, "5550100", customer_voice(seconds))


def finished(caller: Phone, what: str) -> None:
    assert caller.wait(200) == 0, f"{what}: the call did not complete\n{caller.log()}"


def ari_ids(asterisk: Asterisk, kind: str) -> list[str]:
    """Ids of the live ARI channels or bridges."""
    req = urllib.request.Request(f"http://127.0.0.1:{asterisk.http_port}/ari/{kind}")
    req.add_header("Authorization", "Basic " + b64encode(f"emovoice:{SECRET}".encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return [obj["id"] for obj in json.load(resp)]


def ours(asterisk: Asterisk) -> list[str]:
    """The snoop/ExternalMedia channels and bridges the daemon created that still exist."""
    return [i for kind in ("channels", "bridges") for i in ari_ids(asterisk, kind) if i.startswith("emovoice-")]


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def test_customer_and_agent_are_scored_and_everything_is_torn_down(tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk, agent_wav(tmp_path / "agent"))
    with running(ari_daemon(tmp_path / "daemon", asterisk)) as daemon:
        caller = call(tmp_path / "sipp", asterisk, len(CUSTOMER_VOICE) / 8000 + 2)
        daemon.wait_for(lambda evs: len(of_type(evs, "call.started")) == 2, timeout=60)
        assert ours(asterisk)  # snoops, ExternalMedia channels and bridges while the call is up
        (channel,) = [c for c in asterisk.channels() if c.startswith("PJSIP/5551234-")]
        escalation = asterisk.wait(lambda: asterisk.variable(channel, "EMOVOICE_ESCALATION"),
                                   "EMOVOICE_ESCALATION on the caller's channel (AMI Setvar) during the call", 120)
        finished(caller, "tapped call")
        events = daemon.wait_for(lambda evs: len(of_type(evs, "call.ended")) == 2, timeout=60)
        asterisk.wait(lambda: not ours(asterisk), "ARI objects deleted after the call", 30)
    started = {e["role"]: e for e in of_type(events, "call.started")}
    assert set(started) == {"customer", "agent"} and {e["source"] for e in started.values()} == {"ari"}
    assert started["customer"]["meta"]["queue"] == "support"
    scored = {e["role"] for e in of_type(events, "score")}
    assert scored == {"customer", "agent"}
    ended = of_type(events, "call.ended")
    assert {e["reason"] for e in ended} == {"hangup"}
    cues = ended[0]["summary"]["cues"]
    assert cues["talk_overs"] >= 1 and cues["talk_over_s"] > 1.0
    alerts = [e for e in of_type(events, "escalation.raised") if e["role"] == "customer"]
    assert alerts and alerts[0]["at"] > ONSET_S - 1.0
    assert re.fullmatch(r"(customer|agent):(watch|alert|cleared)", escalation)  # the latest transition of either
    print(f"ARI: anger onset {ONSET_S:.1f} s, first customer alert at leg time {alerts[0]['at']} s; cues {cues}")


def test_daemon_down_the_call_goes_on_to_the_queue(tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk, agent_wav(tmp_path / "agent"))
    finished(call(tmp_path / "sipp", asterisk, 5), "daemon down")
    console = asterisk.console()
    assert "@from-pstn:3] Queue(" in console and "Local/1001@agents" in console  # Stasis failed, the queue rang


def test_term_and_kill_mid_call_never_cost_the_call_and_orphans_are_deleted(tmp_path: Path, asterisk: Asterisk) -> None:
    start_pbx(asterisk, agent_wav(tmp_path / "agent"))
    daemon = ari_daemon(tmp_path / "term", asterisk)
    with running(daemon):
        caller = call(tmp_path / "sipp-term", asterisk, AGENT_IN_S + 10)
        daemon.wait_for(lambda evs: {e["role"] for e in of_type(evs, "score")} == {"customer", "agent"}, timeout=90)
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(30)
    assert {e["reason"] for e in of_type(daemon.events(), "call.ended")} == {"shutdown"}
    assert not ours(asterisk)  # a clean stop deletes what it created
    finished(caller, "SIGTERM mid-call")

    daemon = ari_daemon(tmp_path / "kill", asterisk)
    caller = call(tmp_path / "sipp-kill", asterisk, AGENT_IN_S + 20)
    daemon.wait_for(lambda evs: {e["role"] for e in of_type(evs, "score")} == {"customer", "agent"}, timeout=90)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(30)
    assert ours(asterisk)  # a killed daemon leaves its snoops and bridges behind...
    with running(ari_daemon(tmp_path / "after", asterisk)) as restarted:
        asterisk.wait(lambda: not ours(asterisk), "orphans deleted by the restarted daemon", 60)  # ...until it is back
        finished(caller, "SIGKILL mid-call")
        after = call(tmp_path / "sipp-after", asterisk, AGENT_IN_S + 6)  # the agent talks from AGENT_IN_S
        finished(after, "call after the restart")
        events = restarted.wait_for(lambda evs: len(of_type(evs, "call.ended")) == 2, timeout=60)
    assert {e["role"] for e in of_type(events, "score")} == {"customer", "agent"}
