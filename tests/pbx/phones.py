"""Real SIP phones on loopback for the PBX tests: SIPp as the caller (UAC) and as agents' phones (UAS)."""
from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port, terminate
from tests.ingest.sipp import SCENARIO as UAC_SCENARIO, write_rtp_pcap

from .asterisk import free_udp_block

UAS_SCENARIO = Path(__file__).with_name("sipp_uas_agent.xml")
CALLER = "5551234"  # the From user of the UAC scenario, and so its PJSIP endpoint


@dataclass
class Phone:
    """One SIPp process; ``wait()`` for its exit status."""

    proc: subprocess.Popen[str]
    port: int
    workdir: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"sipp on port {self.port} still running after {timeout:.0f} s") from None

    def log(self) -> str:
        """SIPp's error log (unexpected messages, timeouts), for failure messages."""
        return "".join(p.read_text(errors="replace")[-2000:] for p in self.workdir.glob("*_errors.log"))

    def stop(self) -> None:
        terminate(self.proc, 10)


def _sipp(workdir: Path, args: list[str]) -> Phone:
    if not shutil.which("sipp"):
        pytest.skip("sipp (Debian package sip-tester) is needed (./dev test installs it)")
    port = free_port(socket.SOCK_DGRAM)
    media = free_udp_block(4)[0]
    cmd = ["sipp", *args, "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media),
           "-nostdin", "-trace_err"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
    return Phone(proc, port, workdir)


def agent_phone(workdir: Path, voice: np.ndarray, calls: int = 1, answer_ms: int = 300,
                unsent: tuple[float, float] = (0.0, 0.0)) -> Phone:
    """An agent's phone: rings ``answer_ms``, answers, says ``voice`` (8 kHz int16; no RTP at all in the ``unsent``
    seconds), waits for BYE; ``calls`` times."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_rtp_pcap(workdir / "agent.pcap", voice, ssrc=0x5678, unsent=unsent)
    shutil.copy(UAS_SCENARIO, workdir)
    return _sipp(workdir, ["-sf", UAS_SCENARIO.name, "-m", str(calls), "-d", str(answer_ms)])


def caller_phone(workdir: Path, pbx_port: int, exten: str, voice: np.ndarray, calls: int = 1,
                 unsent: tuple[float, float] = (0.0, 0.0)) -> Phone:
    """A caller: dials ``exten`` at the PBX, says ``voice`` (8 kHz int16; nothing at all, not even RTP, in the
    ``unsent`` seconds), then hangs up (BYE); ``calls`` such calls at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_rtp_pcap(workdir / "audio.pcap", voice, unsent=unsent)
    shutil.copy(UAC_SCENARIO, workdir)
    duration_ms = int(len(voice) / 8)
    return _sipp(workdir, [f"127.0.0.1:{pbx_port}", "-sf", UAC_SCENARIO.name, "-s", exten, "-m", str(calls),
                           "-l", str(calls), "-r", str(calls), "-d", str(duration_ms),
                           "-timeout", f"{duration_ms // 1000 + 60}s", "-timeout_error"])


def endpoints(caller_context: str, agents: dict[str, Phone]) -> str:
    """pjsip.conf endpoints: the caller (into ``caller_context``) and each agent at its phone's address."""
    common = "type = endpoint\ndisallow = all\nallow = ulaw\ndirect_media = no\ntransport = transport-udp\n"
    text = f"\n[{CALLER}]\n{common}context = {caller_context}\n"
    for agent, phone in agents.items():
        text += (f"\n[{agent}]\n{common}context = {caller_context}\naors = {agent}\n"
                 f"\n[{agent}]\ntype = aor\ncontact = sip:{agent}@127.0.0.1:{phone.port}\n")
    return text
