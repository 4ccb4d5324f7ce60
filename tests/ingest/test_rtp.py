from __future__ import annotations

import asyncio
import logging
import socket

import numpy as np
import pytest

from emovoice_daemon.ingest.g711 import ulaw_decode, ulaw_encode
from emovoice_daemon.ingest.rtp import (
    FORMATS,
    RtpError,
    RtpPacket,
    RtpReceiver,
    RtpStream,
    build_rtp,
    parse_rtp,
    to_int16,
)
from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring.resample import resample

from .captures import match_snr_db, source_speech


def _metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_parses_the_real_externalmedia_ulaw_header(ulaw_packets: list[bytes]) -> None:
    first = parse_rtp(ulaw_packets[0])
    assert (first.payload_type, first.timestamp, first.marker, len(first.payload)) == (0, 160, False, 160)
    nxt = parse_rtp(ulaw_packets[1])
    assert nxt.sequence == (first.sequence + 1) % 65536 and nxt.timestamp == 320 and nxt.ssrc == first.ssrc


def test_parses_csrc_extension_marker_and_padding() -> None:
    raw = bytes([0xB2, 0x80 | 8]) + (513).to_bytes(2, "big") + (9).to_bytes(4, "big") + (7).to_bytes(4, "big")
    raw += (1).to_bytes(4, "big") + (2).to_bytes(4, "big")  # two CSRCs
    raw += (0xBEDE).to_bytes(2, "big") + (1).to_bytes(2, "big") + b"\x10\xaa\x00\x00"  # 1-word extension
    raw += b"\xd5" * 4 + b"\x00\x00\x03"  # payload + 3 bytes of padding
    p = parse_rtp(raw)
    assert p == RtpPacket(8, 513, 9, 7, b"\xd5" * 4, True, (1, 2), (0xBEDE, b"\x10\xaa\x00\x00"))


def test_build_and_parse_round_trip() -> None:
    p = RtpPacket(0, 65535, 2**32 - 1, 42, b"\xff" * 160, True, (5,), (1, b"abcd"))
    assert parse_rtp(build_rtp(p)) == p


@pytest.mark.parametrize("raw, why", [
    (b"\x80\x00", "shorter"),
    (bytes([0x40, 0]) + bytes(10), "version 1"),
    (bytes([0x83, 0]) + bytes(10) + bytes(8), "CSRC"),
    (bytes([0x90, 0]) + bytes(10) + b"\x00\x00\x00\x05", "extension"),
    (bytes([0xA0, 0]) + bytes(10) + b"\xff\x00", "padding"),
    (bytes([0xA0, 0]) + bytes(10) + b"\xff\x09", "CSRC"),
])
def test_malformed_packets_raise(raw: bytes, why: str) -> None:
    with pytest.raises(RtpError, match=why):
        parse_rtp(raw)


def _decode(packets: list[bytes], fmt: str) -> np.ndarray:
    out: list[np.ndarray] = []
    stream = RtpStream(FORMATS[fmt], out.append)
    for raw in packets:
        stream.receive(parse_rtp(raw))
    stream.finish()
    return np.concatenate(out)


def test_real_ulaw_capture_decodes_to_the_source_speech(ulaw_packets: list[bytes]) -> None:
    pcm = _decode(ulaw_packets, "ulaw")
    assert pcm.dtype == np.int16 and len(pcm) == 160 * len(ulaw_packets)
    assert np.all(pcm[:800] == 0)  # snoop sends mu-law silence (0xFF) before the speech
    speech = source_speech()
    assert match_snr_db(pcm, speech) > 35  # G.711 quantisation noise only (~38 dB)
    assert match_snr_db(pcm, ulaw_decode(ulaw_encode(speech))) > 45  # vs the same speech through G.711


def test_real_slin16_capture_decodes_big_endian_and_resamples(slin16_packets: list[bytes]) -> None:
    pcm = _decode(slin16_packets, "slin16")
    assert len(pcm) == 160 * len(slin16_packets)
    assert match_snr_db(pcm, source_speech()) > 30
    little_endian = np.concatenate([np.frombuffer(parse_rtp(r).payload, "<i2") for r in slin16_packets])
    assert match_snr_db(to_int16(resample(little_endian, 16000, 8000)), source_speech()) < 3


def test_wrong_payload_type_is_dropped(ulaw_packets: list[bytes]) -> None:
    before = _metric("emovoice_rtp_packets_dropped_total", reason="payload_type")
    assert _decode(ulaw_packets[:5], "ulaw").size == 800
    out: list[np.ndarray] = []
    stream = RtpStream(FORMATS["alaw"], out.append)
    stream.receive(parse_rtp(ulaw_packets[0]))
    assert out == [] and _metric("emovoice_rtp_packets_dropped_total", reason="payload_type") == before + 1


def test_lost_packet_is_concealed_with_silence_of_one_frame() -> None:
    frames = [bytes([0x10 + i]) * 160 for i in range(8)]
    out: list[np.ndarray] = []
    stream = RtpStream(FORMATS["ulaw"], out.append, depth=2)
    lost_before = _metric("emovoice_rtp_packets_lost_total")
    for i, f in enumerate(frames):
        if i != 3:
            stream.receive(RtpPacket(0, 1000 + i, 160 * i, 1, f))
    stream.finish()
    pcm = np.concatenate(out)
    assert len(pcm) == 8 * 160
    assert np.all(pcm[480:640] == 0) and np.all(pcm[320:480] != 0) and np.all(pcm[640:800] != 0)
    assert stream.stats.lost == 1 and _metric("emovoice_rtp_packets_lost_total") == lost_before + 1


def test_new_ssrc_flushes_the_old_stream_first() -> None:
    out: list[np.ndarray] = []
    stream = RtpStream(FORMATS["ulaw"], out.append, depth=3)
    stream.receive(RtpPacket(0, 10, 0, 1, b"\x00" * 160))
    stream.receive(RtpPacket(0, 12, 320, 1, b"\x00" * 160))  # 11 still awaited
    stream.receive(RtpPacket(0, 5000, 0, 2, b"\xff" * 160))
    stream.finish()
    pcm = np.concatenate(out)
    assert len(pcm) == 4 * 160 and np.all(pcm[-160:] == 0) and stream.stats.lost == 1


def test_audio_is_handed_on_in_100_ms_chunks_and_the_rest_at_the_end() -> None:
    """Per-chunk work (resampling, cues, scoring) every 20 ms packet cost more CPU than 20 calls leave."""
    out: list[np.ndarray] = []
    stream = RtpStream(FORMATS["slin16"], out.append, depth=0)
    for seq in range(4):
        stream.receive(RtpPacket(118, seq, 320 * seq, 1, b"\x01\x00" * 320))
    assert out == []
    stream.receive(RtpPacket(118, 4, 1280, 1, b"\x01\x00" * 320))
    assert [len(c) for c in out] == [800]  # 5 packets of 20 ms, at the leg's 8 kHz
    stream.receive(RtpPacket(118, 5, 1600, 1, b"\x01\x00" * 320))
    stream.finish()
    assert sum(len(c) for c in out) == 6 * 160


class _Sender:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()


async def _until(cond, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_udp_receiver_reorders_conceals_and_ignores_junk(ulaw_packets: list[bytes]) -> None:
    receiver = RtpReceiver(timeout_s=0.3, jitter_depth=3)
    host, port = await receiver.start("127.0.0.1", 0)
    assert host == "127.0.0.1"
    sender, stranger = _Sender(), _Sender()
    got: list[np.ndarray] = []
    timed_out = asyncio.Event()

    async def on_timeout() -> None:
        timed_out.set()

    receiver.add_stream(sender.addr, "ulaw", got.append, on_timeout)
    malformed = _metric("emovoice_rtp_packets_dropped_total", reason="malformed")
    unknown = _metric("emovoice_rtp_packets_dropped_total", reason="unknown_source")
    order = list(range(100))
    order[10], order[11] = order[11], order[10]  # reordered
    order.remove(50)  # lost
    try:
        stranger.sock.sendto(ulaw_packets[0], (host, port))
        sender.sock.sendto(b"\x00garbage", (host, port))
        for i in order:
            sender.sock.sendto(ulaw_packets[i], (host, port))
        await asyncio.wait_for(timed_out.wait(), 3)
        pcm = np.concatenate(got)
        assert len(pcm) == 100 * 160
        assert np.all(pcm[50 * 160 : 51 * 160] == 0)
        expected = _decode(ulaw_packets[:100], "ulaw")
        keep = np.ones(len(pcm), bool)
        keep[50 * 160 : 51 * 160] = False
        assert np.array_equal(pcm[keep], expected[keep])
        assert _metric("emovoice_rtp_packets_dropped_total", reason="malformed") == malformed + 1
        assert _metric("emovoice_rtp_packets_dropped_total", reason="unknown_source") == unknown + 1
    finally:
        await receiver.stop()
        sender.sock.close()
        stranger.sock.close()


async def test_failing_sink_removes_only_its_stream(ulaw_packets: list[bytes]) -> None:
    receiver = RtpReceiver(timeout_s=5)
    host, port = await receiver.start("127.0.0.1", 0)
    bad, good = _Sender(), _Sender()
    got: list[np.ndarray] = []

    def explode(_: np.ndarray) -> None:
        raise RuntimeError("sink bug")

    ended: list[str] = []

    async def end_bad() -> None:
        ended.append("bad")

    receiver.add_stream(bad.addr, "ulaw", explode, end_bad)
    receiver.add_stream(good.addr, "ulaw", got.append)
    try:
        for raw in ulaw_packets[:5]:
            bad.sock.sendto(raw, (host, port))
            good.sock.sendto(raw, (host, port))
        await _until(lambda: sum(map(len, got)) == 800)
        await _until(lambda: ended == ["bad"])  # the failing stream's call is ended, the other goes on
    finally:
        await receiver.stop()
        bad.sock.close()
        good.sock.close()


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown RTP format 'g729'"):
        RtpReceiver().add_stream(("127.0.0.1", 1), "g729", lambda pcm: None)


async def test_receive_buffer_is_enlarged_and_what_the_kernel_granted_is_reported(caplog) -> None:
    default = RtpReceiver()
    await default.start("127.0.0.1", 0)
    system = default._transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    await default.stop()
    receiver = RtpReceiver()
    with caplog.at_level(logging.INFO, logger="emovoice_daemon"):
        await receiver.start("127.0.0.1", 0, receive_buffer=4 * 1024 * 1024)
    try:
        granted = receiver._transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert receiver.receive_buffer == granted > system
        assert f"kernel granted {granted}" in caplog.text and "net.core.rmem_max" in caplog.text
    finally:
        await receiver.stop()
    assert default.receive_buffer == 0
