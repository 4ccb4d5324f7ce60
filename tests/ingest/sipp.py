"""Drive a real SIP peer (SIPp) on loopback: a UAC that calls, plays an RTP pcap and hangs up."""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emovoice_daemon.ingest.g711 import ulaw_encode

SCENARIO = Path(__file__).with_name("sipp_uac_pcmu.xml")


def write_rtp_pcap(path: Path, pcm8k: np.ndarray, ssrc: int = 0x1234, seq0: int = 40000,
                   unsent: tuple[float, float] = (0.0, 0.0)) -> Path:
    """A libpcap file of PCMU RTP (20 ms packets) carrying ``pcm8k``, as SIPp's play_pcap_audio wants; no packet
    of the ``unsent`` (start, end) seconds is in it (a phone that sends nothing for a while)."""
    codes = ulaw_encode(pcm8k)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # global header, Ethernet
    for i in range(len(codes) // 160):
        if unsent[0] <= i * 0.02 < unsent[1]:
            continue
        rtp = struct.pack("!BBHII", 0x80, 0, (seq0 + i) & 0xFFFF, 160 * i, ssrc) + codes[160 * i:160 * (i + 1)].tobytes()
        udp = struct.pack("!HHHH", 6000, 6002, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1")) + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        usec = 20_000 * i
        out.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sipp_call(workdir: Path, target_port: int, sipp_port: int, pcap: Path, duration_ms: int,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One SIPp call from 127.0.0.1:sipp_port to 127.0.0.1:target_port that plays ``pcap`` for
    ``duration_ms`` then sends BYE."""
    if not shutil.which("sipp"):
        pytest.skip("sipp (Debian package sip-tester) is needed for the SIP peer test")
    shutil.copy(pcap, workdir / "audio.pcap")
    shutil.copy(SCENARIO, workdir / SCENARIO.name)
    cmd = ["sipp", f"127.0.0.1:{target_port}", "-sf", SCENARIO.name, "-i", "127.0.0.1", "-p", str(sipp_port),
           "-mi", "127.0.0.1", "-m", "1", "-d", str(duration_ms), "-s", "emovoice", "-timeout", f"{int(timeout)}s",
           "-timeout_error", "-nostdin", "-trace_err"]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout + 10)
