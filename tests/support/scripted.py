"""A scripted Classifier for end-to-end tests (no trained model exists yet).

``ToneClassifier`` implements the engine's Classifier interface: NEGATIVE is the share of a
window's energy above ``SPLIT_HZ``. ``tone_call`` builds call audio whose "mood" is scripted
by tone frequency: a 400 Hz stretch scores NEUTRAL (~0.05 NEGATIVE), a 1200 Hz stretch
scores NEGATIVE (~0.95).
"""
from __future__ import annotations

import numpy as np

RATE = 8000
SPLIT_HZ = 1000.0
CALM_HZ, ANGRY_HZ = 400.0, 1200.0  # both below the VAD zero-crossing limit (0.35 per sample)


class ToneClassifier:
    """Classifier whose NEGATIVE probability is the high-band energy share of the window."""

    name = "scripted-tone"
    trained = False
    sampling_rate = 16000  # the engine resamples 8 kHz legs to this, as for a real model
    labels = ("NEGATIVE", "NEUTRAL", "POSITIVE")
    model = None  # no torch module: the engine scores whole windows (no streaming front-end)
    escalation: dict = {}  # no escalation defaults of its own

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        power = np.abs(np.fft.rfft(x, axis=1)) ** 2
        freqs = np.fft.rfftfreq(x.shape[1], 1 / self.sampling_rate)
        high = power[:, freqs >= SPLIT_HZ].sum(axis=1) / np.maximum(power.sum(axis=1), 1e-12)
        neg = 0.05 + 0.9 * high
        return np.stack([neg, 0.97 - neg, np.full_like(neg, 0.03)], axis=1).astype(np.float32)


def tone_call(segments: list[tuple[str, float]], amplitude: float = 0.3) -> np.ndarray:
    """8 kHz int16 audio from ``[("calm" | "angry", seconds), ...]``."""
    parts = []
    for mood, seconds in segments:
        t = np.arange(int(seconds * RATE)) / RATE
        freq = ANGRY_HZ if mood == "angry" else CALM_HZ
        parts.append(amplitude * np.sin(2 * np.pi * freq * t))
    return np.rint(np.concatenate(parts) * 32767).astype(np.int16)
