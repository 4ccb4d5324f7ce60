"""G.711 against ITU-T G.711 reference values (Tables 1a/2a: decoder outputs, scaled to 16 bits)."""
from __future__ import annotations

import numpy as np
import pytest

from emovoice_daemon.ingest.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


@pytest.mark.parametrize("code, value", [
    (0x00, -32124), (0x80, 32124),   # largest magnitude
    (0xFF, 0), (0x7F, 0),            # the two zeros
    (0xFE, 8), (0x7E, -8),           # smallest step
    (0xF0, 120), (0xEF, 132),        # segment 0 top / segment 1 bottom
    (0x8F, 16764), (0x9F, 8316),
])
def test_ulaw_decode_reference_values(code: int, value: int) -> None:
    assert int(ulaw_decode(bytes([code]))[0]) == value


@pytest.mark.parametrize("code, value", [
    (0xD5, 8), (0x55, -8),           # smallest magnitudes (even bits inverted)
    (0xAA, 32256), (0x2A, -32256),   # largest magnitudes
    (0xC5, 264), (0xE5, 1056), (0x85, 4224),
])
def test_alaw_decode_reference_values(code: int, value: int) -> None:
    assert int(alaw_decode(bytes([code]))[0]) == value


def test_decoders_use_the_full_16_bit_range() -> None:
    for table in (ulaw_decode(bytes(range(256))), alaw_decode(bytes(range(256)))):
        assert table.dtype == np.int16 and table.max() > 32000 and table.min() < -32000
        assert len(np.unique(table)) >= 255  # mu-law has two zeros


def test_encode_inverts_decode_for_every_code() -> None:
    codes = np.arange(256, dtype=np.uint8)
    u = ulaw_encode(ulaw_decode(codes))
    assert np.array_equal(u[codes != 0x7F], codes[codes != 0x7F]) and u[0x7F] == 0xFF  # -0 encodes as +0
    assert np.array_equal(alaw_encode(alaw_decode(codes)), codes)


@pytest.mark.parametrize("encode, decode, max_rel_error", [(ulaw_encode, ulaw_decode, 0.036),
                                                          (alaw_encode, alaw_decode, 0.032)])
def test_quantisation_error_is_logarithmic(encode, decode, max_rel_error) -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    err = np.abs(decode(encode(pcm)).astype(np.int32) - pcm.astype(np.int32))
    big = np.abs(pcm.astype(np.int32)) > 1024
    assert np.max(err[big] / np.abs(pcm[big].astype(np.int32))) < max_rel_error
    assert np.max(err[~big]) <= 64
