"""One call through the shipped dialplan: a real Asterisk, real SIP phones and the daemon (scripted model).

The SIPp caller dials 100 (extensions.conf [emovoice-inbound]: Gosub emovoice-call, Queue support with
the emovoice-tap gosub) or 200 (Gosub emovoice-audiosocket, an IVR step, then the queue); agent 1001's
phone (SIPp UAS) answers. The caller's voice is scripted by tone for the ToneClassifier: calm (400 Hz),
angry (1200 Hz), calm; the agent stays calm.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import DaemonProcess, free_port
from tests.support.scripted import tone_call
from tests.support.scripted_daemon import start_scripted_daemon

from .asterisk import Asterisk, snippet
from .phones import Phone, caller_phone, endpoints

CALM_S, ANGRY_S, TAIL_S = 8, 14, 4
CALLER_VOICE = tone_call([("calm", CALM_S), ("angry", ANGRY_S), ("calm", TAIL_S)])
AGENT_VOICE = tone_call([("calm", CALM_S + ANGRY_S + TAIL_S + 5)])
CALL_TIMEOUT_S = CALM_S + ANGRY_S + TAIL_S + 90


AMI_SECRET = "ami-secret-for-tests"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def start_pbx(asterisk: Asterisk, ports: dict[str, int], agent: Phone, phones: dict[str, Phone] | None = None) -> Asterisk:
    """Asterisk with the shipped dialplan, queue and AMI user, pointed at ``ports`` (audiosocket, customer,
    agent); agent 1001 and any other ``phones`` (extension -> phone) are PJSIP endpoints."""
    dialplan = snippet("extensions.conf", {
        "EMOVOICE_AUDIOSOCKET=127.0.0.1:9093": f"EMOVOICE_AUDIOSOCKET=127.0.0.1:{ports['audiosocket']}",
        "EMOVOICE_TAP_CUSTOMER=127.0.0.1:9094": f"EMOVOICE_TAP_CUSTOMER=127.0.0.1:{ports['customer']}",
        "EMOVOICE_TAP_AGENT=127.0.0.1:9095": f"EMOVOICE_TAP_AGENT=127.0.0.1:{ports['agent']}"})
    dialplan += ("\n[test-in]\nexten => 100,1,Goto(emovoice-inbound,100,1)\n"  # the tap of a queued call
                 "exten => 200,1,Gosub(emovoice-audiosocket,s,1)\n same => n,Queue(support)\n")  # an IVR step first
    manager = snippet("manager.conf", {"port = 5038": f"port = {asterisk.ami_port}",
                                       "secret = change-me-to-a-long-random-secret": f"secret = {AMI_SECRET}"})
    return asterisk.start({"extensions.conf": dialplan, "queues.conf": snippet("queues.conf"), "manager.conf": manager,
                           "pjsip.conf": asterisk.pjsip_conf(endpoints("test-in", {"1001": agent, **(phones or {})}))})


def tap_daemon(workdir: Path, ports: dict[str, int] | None = None,
               overrides: dict | None = None) -> tuple[DaemonProcess, dict[str, int]]:
    """The scripted daemon with tap listeners (on ``ports`` when given: a restart); returns it and its ports."""
    ports = ports or {"audiosocket": free_port(), "customer": free_port(), "agent": free_port()}
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    daemon = start_scripted_daemon(workdir, {**overrides, "audiosocket": {
        **overrides.get("audiosocket", {}), "port": ports["audiosocket"],
        "role_ports": {"customer": ports["customer"], "agent": ports["agent"]}}})
    return daemon, ports


def ami_config(asterisk: Asterisk, **extra: object) -> dict:
    """The daemon's ami section for this Asterisk (the shipped manager.conf user)."""
    return {"ami": {"enabled": True, "port": asterisk.ami_port, "secret": AMI_SECRET, "reconnect_max_s": 1.0, **extra}}


def ami_connects(daemon: DaemonProcess) -> int:
    """How often the daemon has logged in to AMI so far."""
    return daemon.stderr_path.read_text().count("AMI connected")


def start_call(workdir: Path, asterisk: Asterisk, exten: str) -> Phone:
    """The caller's phone dials ``exten`` and talks (CALLER_VOICE), then hangs up."""
    return caller_phone(workdir, asterisk.sip_port, exten, CALLER_VOICE)


def place_call(workdir: Path, asterisk: Asterisk, exten: str = "100") -> int:
    """One whole call; SIPp's exit status (0: answered, talked, hung up cleanly)."""
    caller = start_call(workdir, asterisk, exten)
    try:
        return caller.wait(CALL_TIMEOUT_S)
    finally:
        caller.stop()




def alert_latency(events: list[dict], role: str) -> tuple[float, float]:
    """(anger onset, first escalation) in ``role``'s leg seconds. The onset is the end of the first window
    that hears the angry tone (the tone began at most one 1 s hop before it)."""
    onset = next(e["window"]["end"] for e in events
                 if e["type"] == "score" and e["role"] == role and e["probs"]["NEGATIVE"] > 0.1)
    alert = next(e["at"] for e in events if e["type"] == "escalation.raised" and e["role"] == role)
    return onset, alert


def record(name: str, figures: dict) -> None:
    """Measured figures of one path, for the closing table (tests/artifacts/pbx_<name>.json)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"pbx_{name}.json").write_text(json.dumps(figures, indent=1))
