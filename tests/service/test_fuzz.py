"""Property tests: arbitrary bytes into the AudioSocket and RTP parsers raise only their documented errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emovoice_daemon.ingest.audiosocket import (
    HEADER,
    AudioDecoder,
    FrameParser,
    Kind,
    ProtocolError,
    encode_frame,
    parse_uuid,
)
from emovoice_daemon.ingest.rtp import FORMATS, RtpError, RtpPacket, RtpStream, build_rtp, parse_rtp

MAX_FRAME = 1024
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

valid_frames = st.builds(lambda kind, payload: encode_frame(kind, payload),
                         st.sampled_from(list(Kind)), st.binary(max_size=MAX_FRAME))
# mostly well-formed streams with garbage spliced in, so the parser gets deep as well as shallow
streams = st.lists(st.one_of(valid_frames, st.binary(max_size=64)), max_size=12).map(b"".join)


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@FUZZ
@given(streams, st.lists(st.integers(min_value=0), max_size=8), st.sampled_from(["slin", "ulaw", "alaw"]))
def test_audiosocket_parser_raises_only_protocol_error(data: bytes, points: list[int], payload_format: str) -> None:
    parser = FrameParser(MAX_FRAME)
    decoder = AudioDecoder(payload_format)
    consumed = b""
    try:
        for chunk in cuts(data, points):
            for frame in parser.feed(chunk):
                consumed += encode_frame(frame.kind, frame.payload)
                if frame.kind == Kind.UUID:
                    parse_uuid(frame.payload)
                elif frame.kind == Kind.AUDIO or frame.kind in range(Kind.SLIN12, Kind.SLIN192 + 1):
                    pcm = decoder.decode(frame)
                    assert pcm.dtype == np.int16 and pcm.ndim == 1
            assert parser.pending <= HEADER.size + MAX_FRAME  # never buffers more than one frame
    except ProtocolError:
        return
    assert data.startswith(consumed) and len(data) - len(consumed) == parser.pending


@FUZZ
@given(st.binary(max_size=1500))
def test_rtp_parser_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert 0 <= packet.payload_type < 128 and len(packet.payload) <= len(data) - 12


rtp_packets = st.builds(
    lambda pt, seq, ts, payload, marker, csrcs, ext: build_rtp(RtpPacket(pt, seq, ts, 1, payload, marker, csrcs, ext)),
    st.sampled_from([0, 8, 118, 96]), st.integers(0, 65535), st.integers(0, 2**32 - 1), st.binary(max_size=700),
    st.booleans(), st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple),
    st.none() | st.tuples(st.integers(0, 65535), st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])))


@FUZZ
@given(st.lists(st.one_of(rtp_packets, st.binary(max_size=200)), max_size=30), st.sampled_from(sorted(FORMATS)))
def test_rtp_stream_takes_any_packet_sequence(datagrams: list[bytes], fmt: str) -> None:
    """What the receiver does per datagram: parse, then the stream; only RtpError may escape the stream."""
    chunks: list[np.ndarray] = []
    stream = RtpStream(FORMATS[fmt], chunks.append, depth=3)
    for data in datagrams:
        try:
            packet = parse_rtp(data)
        except RtpError:
            continue
        try:
            stream.receive(packet)
        except RtpError:
            continue
    stream.finish()
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)


def test_empty_slin16_payload_does_not_break_the_stream() -> None:
    """Was a dropped stream before: an empty chunk reached the resampler's filter."""
    chunks: list[np.ndarray] = []
    stream = RtpStream(FORMATS["slin16"], chunks.append, depth=0)
    stream.receive(RtpPacket(118, 1, 320, 1, b""))
    stream.receive(RtpPacket(118, 2, 640, 1, bytes(640)))
    stream.finish()
    assert sum(len(c) for c in chunks) == 160


def test_empty_high_rate_audiosocket_frame_is_a_protocol_error() -> None:
    """Was a crash before (an empty 0x11..0x18 frame reached the resampler); now the peer's protocol error."""
    with pytest.raises(ProtocolError, match="empty SLIN16 frame"):
        AudioDecoder("slin").decode(FrameParser(MAX_FRAME).feed(encode_frame(Kind.SLIN16))[0])
