"""Access to the real Asterisk captures in ../shared (skips when absent) and audio comparison."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "asterisk"


def shared_file(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"../shared not present: {name} (real Asterisk capture) is skipped")
    return path


def length_prefixed(path: Path) -> list[bytes]:
    """Datagrams of a capture stored as 2-byte big-endian length + bytes."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack_from(">H", data, i)
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def match_snr_db(received: np.ndarray, reference: np.ndarray) -> float:
    """SNR of ``received`` against ``reference`` after aligning them by cross-correlation."""
    probe = reference[:4000].astype(np.float64)
    offset = int(np.argmax(np.correlate(received.astype(np.float64), probe, "valid")))
    seg = received[offset : offset + len(reference)].astype(np.float64)
    ref = reference[: len(seg)].astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((seg - ref) ** 2), 1e-9)))


def source_speech() -> np.ndarray:
    """The 7 s of speech every capture carries (8 kHz int16)."""
    pcm, rate = sf.read(shared_file("source_speech_8k.wav"), dtype="int16")
    assert rate == 8000
    return pcm
