"""Fail-open: with the daemon down, or stopped (TERM) or killed (KILL) mid-call, every AudioSocket path of the
shipped dialplan lets the SIP caller's call complete; a restarted daemon taps the next call again."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import free_port, running

from .asterisk import Asterisk
from .callflow import AGENT_VOICE, CALL_TIMEOUT_S, place_call, start_call, start_pbx, tap_daemon
from .phones import agent_phone

CONNECT_FAILED = "Failed to connect to AudioSocket service"


def tap_channels(asterisk: Asterisk) -> list[str]:
    return [c for c in asterisk.channels() if c.startswith(("Local/", "AudioSocket/"))]


def test_daemon_down_tap_and_ivr_calls_complete(tmp_path: Path, asterisk: Asterisk) -> None:
    nothing_listens = {"audiosocket": free_port(), "customer": free_port(), "agent": free_port()}
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE, calls=2)
    start_pbx(asterisk, nothing_listens, agent)
    assert place_call(tmp_path / "tap-call", asterisk, "100") == 0
    assert place_call(tmp_path / "ivr-call", asterisk, "200") == 0
    assert agent.wait(30) == 0, agent.log()  # both calls reached the agent, who heard the caller hang up
    assert asterisk.console().count(CONNECT_FAILED) == 3  # two taps and the IVR step each tried and failed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_daemon_restart_mid_call_keeps_the_call_and_taps_the_next(tmp_path: Path, asterisk: Asterisk,
                                                                   sig: signal.Signals) -> None:
    daemon, ports = tap_daemon(tmp_path / "daemon")
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE, calls=2)
    start_pbx(asterisk, ports, agent)
    with running(daemon):
        caller = start_call(tmp_path / "call1", asterisk, "100")
        daemon.wait_for(lambda evs: sum(e["type"] == "call.started" for e in evs) == 2, timeout=60)
        daemon.proc.send_signal(sig)
        daemon.proc.wait(30)
    asterisk.wait(lambda: not tap_channels(asterisk), "the taps' Local/AudioSocket channels gone", 30)
    assert len(asterisk.channels()) == 2  # the caller and agent 1001, still talking
    assert caller.wait(CALL_TIMEOUT_S) == 0, caller.log()
    ended = [e["reason"] for e in daemon.events() if e["type"] == "call.ended"]
    assert ended == (["shutdown", "shutdown"] if sig == signal.SIGTERM else [])

    restarted, _ = tap_daemon(tmp_path / "restarted", ports)
    with running(restarted):
        assert place_call(tmp_path / "call2", asterisk, "100") == 0
        events = restarted.wait_for(lambda evs: sum(e["type"] == "call.ended" for e in evs) == 2, timeout=60)
    assert sorted(e["role"] for e in events if e["type"] == "call.started") == ["agent", "customer"]
    assert agent.wait(30) == 0, agent.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_ivr_step_daemon_stopped_mid_call_caller_goes_on_to_the_agent(tmp_path: Path, asterisk: Asterisk,
                                                                      sig: signal.Signals) -> None:
    daemon, ports = tap_daemon(tmp_path / "daemon")
    agent = agent_phone(tmp_path / "agent1001", AGENT_VOICE)
    start_pbx(asterisk, ports, agent)
    with running(daemon):
        caller = start_call(tmp_path / "call", asterisk, "200")
        daemon.wait_for(lambda evs: any(e["type"] == "call.started" and e["role"] == "mixed" for e in evs), 60)
        daemon.proc.send_signal(sig)
        daemon.proc.wait(30)
    assert caller.wait(CALL_TIMEOUT_S) == 0, caller.log()
    assert agent.wait(30) == 0, agent.log()  # after AudioSocket() failed, the queue put the caller through
