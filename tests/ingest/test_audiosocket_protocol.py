"""AudioSocket framing against the real Asterisk 22.10.1 captures in ../shared/asterisk."""
from __future__ import annotations

import json
import random
import struct
import uuid

import numpy as np
import pytest
import soundfile as sf

from emovoice_daemon.ingest.audiosocket import (AudioDecoder, Frame, FrameParser, Kind, ProtocolError, encode_frame,
                                                 parse_uuid)
from emovoice_daemon.tools.simulate import audiosocket_frames
from tests.conftest import shared_path

CAPTURE_UUID = "11111111-2222-3333-4444-555555555555"


def capture(name: str) -> bytes:
    return shared_path("asterisk", "scenarios", f"{name}.bin").read_bytes()


def parse_all(data: bytes, chunks: list[int] | None = None) -> list:
    parser = FrameParser(8192)
    if chunks is None:
        return parser.feed(data)
    frames, i = [], 0
    for n in chunks:
        frames += parser.feed(data[i:i + n])
        i += n
    frames += parser.feed(data[i:])
    assert parser.pending == 0
    return frames


def test_app_capture_layout() -> None:
    frames = parse_all(capture("audiosocket_app"))
    assert frames[0].kind == Kind.UUID and parse_uuid(frames[0].payload) == CAPTURE_UUID
    audio = frames[1:]
    assert all(f.kind == Kind.AUDIO for f in audio)
    assert {len(f.payload) for f in audio[:-1]} == {320}
    assert len(audio[-1].payload) < 320  # Asterisk's last frame is short; still audio


@pytest.mark.parametrize("seed", range(5))
def test_frames_split_or_coalesced_across_reads_parse_identically(seed: int) -> None:
    data = capture("audiosocket_app")
    rng = random.Random(seed)
    chunks = [rng.choice([1, 2, 3, 7, 100, 319, 320, 323, 1000, 4096]) for _ in range(400)]
    assert parse_all(data, chunks) == parse_all(data)


def test_decoded_audio_equals_what_asterisk_recorded() -> None:
    frames = parse_all(capture("audiosocket_app"))
    decoder = AudioDecoder("slin")
    pcm = np.concatenate([decoder.decode(f) for f in frames[1:]])
    expected, rate = sf.read(shared_path("asterisk", "scenarios", "audiosocket_app.audio.wav"), dtype="int16")
    assert rate == 8000
    np.testing.assert_array_equal(pcm, expected)


def test_dtmf_frames_carry_one_ascii_digit() -> None:
    frames = parse_all(capture("as_dtmf"))
    digits = [f.payload.decode() for f in frames if f.kind == Kind.DTMF]
    listed = json.loads(shared_path("asterisk", "scenarios", "as_dtmf.frames.json").read_text())
    assert len(digits) == sum(1 for f in listed if f["kind"] == 3) > 0
    assert all(len(d) == 1 and d in "0123456789*#ABCD" for d in digits)


def test_chan_audiosocket_slin16_frames_are_0x12_and_resampled_to_8k() -> None:
    frames = parse_all(capture("chan_audiosocket_dial_slin16"))
    audio = [f for f in frames if f.kind == Kind.SLIN16]
    assert audio and {len(f.payload) for f in audio[:-1]} == {640}
    decoder = AudioDecoder("slin")
    out = np.concatenate([decoder.decode(f) for f in audio])
    assert abs(len(out) - sum(len(f.payload) for f in audio) // 4) <= 1  # 16 kHz -> 8 kHz
    assert np.abs(out).max() > 1000  # real speech survived, not silence


def test_externalmedia_ulaw_payload_decodes_with_configured_format() -> None:
    frames = parse_all(capture("externalmedia_audiosocket_tcp_ulaw"))
    audio = [f for f in frames if f.kind == Kind.AUDIO]
    assert {len(f.payload) for f in audio[:-1]} == {160}  # 0x10 frames, but 160 bytes of mu-law
    as_slin = np.concatenate([AudioDecoder("slin").decode(f) for f in audio])
    as_ulaw = np.concatenate([AudioDecoder("ulaw").decode(f) for f in audio])
    assert len(as_ulaw) == 2 * len(as_slin)
    assert np.abs(as_ulaw).max() > 4000 and np.abs(as_ulaw).max() < 32768


@pytest.mark.parametrize("fmt, kind", [("slin", Kind.AUDIO), ("ulaw", Kind.AUDIO), ("slin", Kind.SLIN16)])
def test_a_run_of_frames_decodes_to_the_samples_of_its_frames_one_by_one(fmt: str, kind: Kind) -> None:
    """Frames coalesced in one read reach the leg as one chunk: the same samples (half a slin sample is a
    protocol error, see test_audiosocket_faults)."""
    rng = np.random.default_rng(1)
    frames = [Frame(kind, rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for n in (320, 8, 320, 162, 320)]
    decoder = AudioDecoder(fmt)
    one_by_one = np.concatenate([decoder.decode(f) for f in frames])
    as_run = AudioDecoder(fmt).decode_run(frames)
    assert as_run.dtype == np.int16 and np.array_equal(as_run, one_by_one)


def test_simulator_frames_are_byte_faithful_to_asterisk() -> None:
    real = capture("audiosocket_app")
    frames = parse_all(real)
    pcm = np.concatenate([np.frombuffer(f.payload, "<i2") for f in frames[1:]])
    assert b"".join(audiosocket_frames(CAPTURE_UUID, pcm)) == real


@pytest.mark.parametrize("data, message", [
    (b"\x42\x00\x00", "unknown frame type 0x42"),
    (b"\x10\xff\xff", "frame length 65535 over the limit"),
    (struct.pack(">BH", 0x01, 5) + b"12345", None),
])
def test_bad_headers(data: bytes, message: str | None) -> None:
    parser = FrameParser(8192)
    if message:
        with pytest.raises(ProtocolError, match=message):
            parser.feed(data)
    else:
        (frame,) = parser.feed(data)
        with pytest.raises(ProtocolError, match="UUID frame of 5 bytes"):
            parse_uuid(frame.payload)


def test_encode_roundtrip() -> None:
    call = uuid.uuid4()
    data = encode_frame(Kind.UUID, call.bytes) + encode_frame(Kind.HANGUP)
    frames = FrameParser(8192).feed(data)
    assert parse_uuid(frames[0].payload) == str(call) and frames[1].kind == Kind.HANGUP
