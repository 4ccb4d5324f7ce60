"""ITU-T G.711 mu-law and A-law, as 256-entry decode and 65536-entry encode tables.

Decoding gives full 16-bit signed linear samples (the values of the ITU reference
and of Asterisk's ``ulaw.c``/``alaw.c``), never 8-bit audio.
"""
from __future__ import annotations

import numpy as np

_BIAS = 0x84
_ULAW_CLIP = 8159
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])

ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


def _ulaw_to_linear(code: np.ndarray) -> np.ndarray:
    u = ~code.astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


def _alaw_to_linear(code: np.ndarray) -> np.ndarray:
    a = code.astype(np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _linear_to_ulaw(pcm: np.ndarray) -> np.ndarray:
    v = pcm.astype(np.int32) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), _ULAW_CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, v)
    code = (seg << 4) | ((v >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _linear_to_alaw(pcm: np.ndarray) -> np.ndarray:
    v = pcm.astype(np.int32) >> 3
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(_SEG_AEND, v)
    quant = np.where(seg < 2, v >> 1, v >> np.maximum(seg, 1)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    return (code ^ mask).astype(np.uint8)


_ALL_CODES = np.arange(256, dtype=np.uint8)
_ALL_PCM = np.arange(-32768, 32768, dtype=np.int32)
ULAW_DECODE = _ulaw_to_linear(_ALL_CODES)
ALAW_DECODE = _alaw_to_linear(_ALL_CODES)
_ULAW_ENCODE = _linear_to_ulaw(_ALL_PCM)
_ALAW_ENCODE = _linear_to_alaw(_ALL_PCM)


def ulaw_decode(payload: bytes | np.ndarray) -> np.ndarray:
    """Decode mu-law bytes to int16 samples."""
    return ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8) if isinstance(payload, bytes) else payload]


def alaw_decode(payload: bytes | np.ndarray) -> np.ndarray:
    """Decode A-law bytes to int16 samples."""
    return ALAW_DECODE[np.frombuffer(payload, dtype=np.uint8) if isinstance(payload, bytes) else payload]


def ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 samples to mu-law codes (uint8)."""
    return _ULAW_ENCODE[pcm.astype(np.int32) + 32768]


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 samples to A-law codes (uint8)."""
    return _ALAW_ENCODE[pcm.astype(np.int32) + 32768]
