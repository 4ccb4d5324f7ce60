"""Telephony degradation, on the fly and seeded.

Every function takes float32 audio in [-1, 1]. The chain a call goes through is:
resample to 8 kHz -> (optional speed perturbation, another speaker's tempo and pitch) -> gain ->
handset band limit (300-3400 Hz) -> line noise and hum -> G.711 (mu-law or A-law) -> packet loss.
The codecs and the resampler are the daemon's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

from emovoice_daemon.ingest.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from emovoice_daemon.scoring.resample import resample

TELEPHONE_RATE = 8000


def to_telephone_rate(x: np.ndarray, rate: int) -> np.ndarray:
    """Anti-aliased resampling to 8 kHz (a no-op for 8 kHz sources)."""
    return resample(x, rate, TELEPHONE_RATE)


@lru_cache(maxsize=16)
def _bandpass(low: float, high: float, rate: int) -> np.ndarray:
    return signal.butter(4, [low, high], btype="bandpass", fs=rate, output="sos")


def band_limit(x: np.ndarray, rate: int = TELEPHONE_RATE, low: float = 300.0, high: float = 3400.0) -> np.ndarray:
    """Telephone-handset band limit (4th-order Butterworth band-pass)."""
    return signal.sosfilt(_bandpass(low, high, rate), x).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] to int16 with clipping."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def g711_roundtrip(x: np.ndarray, law: str = "ulaw") -> np.ndarray:
    """Encode and decode with G.711 mu-law (``"ulaw"``) or A-law (``"alaw"``)."""
    pcm = to_int16(x)
    if law == "ulaw":
        out = ulaw_decode(ulaw_encode(pcm))
    elif law == "alaw":
        out = alaw_decode(alaw_encode(pcm))
    else:
        raise ValueError(f"unknown G.711 law {law!r}")
    return out.astype(np.float32) / 32768.0


def power(x: np.ndarray) -> float:
    """Mean power, floored so silence does not divide by zero."""
    return max(float(np.mean(np.square(x, dtype=np.float64))), 1e-10)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, pink: bool = False) -> np.ndarray:
    """Add white (or pink) noise at ``snr_db`` relative to the whole signal's mean power."""
    noise = rng.standard_normal(len(x))
    if pink:
        spec = np.fft.rfft(noise)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        noise = np.fft.irfft(spec, n=len(x))
    noise *= np.sqrt(power(x) / (power(noise) * 10 ** (snr_db / 10)))
    return (x + noise).astype(np.float32)


def add_hum(x: np.ndarray, rate: int, snr_db: float, mains_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Add mains hum (fundamental plus odd harmonics, random phases) at ``snr_db``."""
    t = np.arange(len(x)) / rate
    hum = sum(np.sin(2 * np.pi * k * mains_hz * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 3, 5, 7))
    hum = np.asarray(hum) * np.sqrt(power(x) / (power(np.asarray(hum)) * 10 ** (snr_db / 10)))
    return (x + hum).astype(np.float32)


SPEED_STEP = 0.025  # speed factors on a grid so the resampling ratio stays small (8000 Hz * 0.025 = 200 Hz)


def speed_perturb(x: np.ndarray, factor: float, rate: int = TELEPHONE_RATE) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (tempo and pitch both scale, as in Kaldi's speed perturbation):
    resample as if it had been recorded at ``rate * factor``. ``factor`` is rounded to the ``SPEED_STEP`` grid."""
    return resample(x, int(round(rate * round(factor / SPEED_STEP) * SPEED_STEP)), rate)


def packet_loss(x: np.ndarray, rate: int, loss_rate: float, rng: np.random.Generator, packet_ms: float = 20.0) -> np.ndarray:
    """Zero whole RTP-sized packets independently with probability ``loss_rate``."""
    size = int(rate * packet_ms / 1000)
    out = x.copy()
    for start in range(0, len(x), size):
        if rng.random() < loss_rate:
            out[start : start + size] = 0.0
    return out


def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db`` and clip to [-1, 1] (a hot line clips)."""
    return np.clip(x * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class TelephonyAugment:
    """Random telephone channel; each stage fires with its probability, parameters drawn uniformly."""

    p_speed: float = 0.0
    speed: tuple[float, float] = (0.9, 1.1)
    p_gain: float = 0.8
    gain_db: tuple[float, float] = (-15.0, 6.0)
    p_band_limit: float = 0.9
    p_noise: float = 0.8
    snr_db: tuple[float, float] = (5.0, 35.0)
    p_pink: float = 0.5
    p_hum: float = 0.3
    hum_snr_db: tuple[float, float] = (15.0, 40.0)
    p_codec: float = 0.9
    p_alaw: float = 0.3
    p_packet_loss: float = 0.3
    loss_rate: tuple[float, float] = (0.0, 0.05)

    def __call__(self, x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
        """Degrade ``x`` (at ``rate``) and return it at 8 kHz."""
        y = to_telephone_rate(x, rate)
        if rng.random() < self.p_speed:
            y = speed_perturb(y, rng.uniform(*self.speed))
        if rng.random() < self.p_gain:
            y = apply_gain(y, rng.uniform(*self.gain_db))
        if rng.random() < self.p_band_limit:
            y = band_limit(y)
        if rng.random() < self.p_noise:
            y = add_noise(y, rng.uniform(*self.snr_db), rng, pink=rng.random() < self.p_pink)
        if rng.random() < self.p_hum:
            y = add_hum(y, TELEPHONE_RATE, rng.uniform(*self.hum_snr_db), float(rng.choice([50.0, 60.0])), rng)
        if rng.random() < self.p_codec:
            y = g711_roundtrip(y, "alaw" if rng.random() < self.p_alaw else "ulaw")
        if rng.random() < self.p_packet_loss:
            y = packet_loss(y, TELEPHONE_RATE, rng.uniform(*self.loss_rate), rng)
        return np.clip(y, -1.0, 1.0).astype(np.float32)


TEST_SNR_DB = 20.0
CONDITIONS = ("clean", "telephony")
CONDITION_TEXT = {
    "clean": "clean 8 kHz (source audio, anti-aliased to 8 kHz, nothing else)",
    "telephony": f"telephony-degraded: 300-3400 Hz band limit + white line noise at {TEST_SNR_DB:g} dB SNR + G.711 mu-law",
}


def eval_condition(x: np.ndarray, rate: int, condition: str, seed: int) -> np.ndarray:
    """Deterministic evaluation condition (see ``CONDITION_TEXT``); returns 8 kHz audio."""
    y = to_telephone_rate(x, rate)
    if condition == "clean":
        return y
    if condition != "telephony":
        raise ValueError(f"unknown test condition {condition!r}")
    y = add_noise(band_limit(y), TEST_SNR_DB, np.random.default_rng(seed))
    return g711_roundtrip(np.clip(y, -1.0, 1.0), "ulaw")
