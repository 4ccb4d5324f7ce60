from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import numpy as np

from emovoice_daemon.config import SipConfig
from emovoice_daemon.ingest.g711 import ulaw_decode, ulaw_encode
from emovoice_daemon.ingest.sip import SipEndpoint, split_hostport
from emovoice_daemon.ingest.sipcallid import sip_call_id
from emovoice_daemon.outputs import metrics

from .fakes import RecordingCalls
from .sipp import free_udp_port, run_sipp_call, write_rtp_pcap


def test_hostport_and_call_id_helpers() -> None:
    assert split_hostport("pbx.example") == ("pbx.example", 5060)
    assert split_hostport("10.0.0.1:5080") == ("10.0.0.1", 5080)
    cid = sip_call_id("1-234@127.0.0.1:5060")
    assert cid.startswith("sip-") and ":" not in cid and cid == sip_call_id("1-234@127.0.0.1:5060")
    assert sip_call_id("1-234@127.0.0.1:5060", "1796312718.3") == "1796312718.3"  # X-EmoVoice-Call
    assert sip_call_id("1-234@127.0.0.1:5060", "bad:id") == cid


def _endpoint(calls: RecordingCalls, sipp_port: int, **over) -> tuple[SipEndpoint, int]:
    port = free_udp_port()
    rtp = free_udp_port()
    cfg = SipConfig(enabled=True, port=port, server=f"127.0.0.1:{sipp_port}", register=False,
                    rtp_port_low=rtp, rtp_port_high=rtp, **over)
    return SipEndpoint(cfg, calls), port  # type: ignore[arg-type]


async def until(cond, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_sipp_call_is_answered_and_scored_as_16_bit_audio(tmp_path: Path, speech_8k: np.ndarray) -> None:
    calls = RecordingCalls()
    sipp_port = free_udp_port()
    endpoint, port = _endpoint(calls, sipp_port)
    await endpoint.start()
    try:
        pcap = write_rtp_pcap(tmp_path / "speech.pcap", speech_8k)
        duration_ms = 1000 * len(speech_8k) // 8000 + 500
        result = await asyncio.to_thread(run_sipp_call, tmp_path, port, sipp_port, pcap, duration_ms)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        (leg,) = calls.legs.values()
        await until(lambda: leg.ended is not None)
        assert leg.ended == "hangup" and leg.source == "sip" and leg.role == "customer"
        assert leg.meta["caller"] == "5551234" and leg.meta["codec"] == "ulaw"
        audio = leg.audio
        sent = 160 * (len(speech_8k) // 160)  # whole 20 ms packets in the pcap
        assert np.array_equal(audio, ulaw_decode(ulaw_encode(speech_8k[:sent])))  # every packet, bit-exact
        # Full 16-bit G.711: quiet samples survive (8-bit linear audio has steps of 256).
        voiced = np.abs(audio[audio != 0].astype(np.int32))
        assert voiced.min() < 128 and voiced.max() / voiced.min() > 256
    finally:
        await endpoint.stop()


async def test_invite_from_outside_allow_is_refused(tmp_path: Path, speech_8k: np.ndarray) -> None:
    calls = RecordingCalls()
    sipp_port = free_udp_port()
    endpoint, port = _endpoint(calls, sipp_port, allow=["10.0.0.0/8"])
    refused = metrics.REGISTRY.get_sample_value("emovoice_sip_calls_total", {"outcome": "refused"}) or 0
    await endpoint.start()
    try:
        pcap = write_rtp_pcap(tmp_path / "speech.pcap", speech_8k[:8000])
        result = await asyncio.to_thread(run_sipp_call, tmp_path, port, sipp_port, pcap, 500, 15)
        assert result.returncode != 0 and calls.legs == {}
        assert metrics.REGISTRY.get_sample_value("emovoice_sip_calls_total", {"outcome": "refused"}) == refused + 1
        # The 486 reaches SIPp before pyVoIP's call thread forgets the call: wait for the bookkeeping.
        phone = endpoint._phone
        assert phone is not None
        await until(lambda: phone.calls == {}, timeout=5)  # the refused call is forgotten
    finally:
        await endpoint.stop()


OPTIONS = ("OPTIONS sip:emovoice@127.0.0.1:{port} SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 127.0.0.1:{peer};rport;branch=z9hG4bK-qualify-1\r\n"
           "From: <sip:emovoice@127.0.0.1>;tag=pbx-1\r\nTo: <sip:emovoice@127.0.0.1:{port}>\r\n"
           "Call-ID: qualify-1@127.0.0.1\r\nCSeq: 7 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
STRAY_RESPONSE = ("SIP/2.0 403 Forbidden\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-x\r\n"
                  "From: <sip:emovoice@127.0.0.1>;tag=a\r\nTo: <sip:emovoice@127.0.0.1>;tag=b\r\n"
                  "Call-ID: stray@127.0.0.1\r\nCSeq: 3 REGISTER\r\nContent-Length: 0\r\n\r\n")


async def test_options_qualify_is_answered_and_pyvoip_prints_nothing(capfd, caplog) -> None:
    """The PBX's qualify (OPTIONS) gets 200 OK, else Asterisk marks the contact Unreachable; a response
    pyVoIP has no use for goes to our debug log, not to stdout as 'TODO: Add 500 Error...'."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(10)
    endpoint, port = _endpoint(RecordingCalls(), peer.getsockname()[1])
    await endpoint.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="emovoice_daemon.ingest.sip"):
            peer.sendto(STRAY_RESPONSE.format(port=port).encode(), ("127.0.0.1", port))
            peer.sendto(OPTIONS.format(port=port, peer=peer.getsockname()[1]).encode(), ("127.0.0.1", port))
            reply = (await asyncio.to_thread(peer.recv, 4096)).decode()
            await until(lambda: "TODO: Add 500 Error" in caplog.text)
    finally:
        await endpoint.stop()
        peer.close()
    head = reply.split("\r\n")
    assert head[0] == "SIP/2.0 200 OK"
    assert "Call-ID: qualify-1@127.0.0.1" in head and "CSeq: 7 OPTIONS" in head
    assert any(h.startswith("Allow:") and "OPTIONS" in h for h in head)
    assert "TODO" not in capfd.readouterr().out
