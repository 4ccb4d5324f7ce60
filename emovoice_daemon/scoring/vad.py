"""Speech gating: how much of a window is voiced, by frame energy and zero crossings.

A 20 ms frame is voiced when it is louder than ``energy_dbfs`` and crosses zero at most
``MAX_ZCR`` times per sample: voiced speech is periodic and low-pitched, while hiss, line
noise and clicks cross zero far more often.
"""
from __future__ import annotations

import numpy as np

FRAME_S = 0.02
MAX_ZCR = 0.35


def _frames(pcm: np.ndarray, rate: int) -> np.ndarray:
    n = int(rate * FRAME_S)
    return pcm[: len(pcm) // n * n].astype(np.float32).reshape(-1, n) / 32768.0


def frame_dbfs(pcm: np.ndarray, rate: int) -> np.ndarray:
    """RMS level in dBFS of each 20 ms frame of int16 audio."""
    frames = _frames(pcm, rate)
    return 20 * np.log10(np.sqrt(np.mean(frames * frames, axis=1) + 1e-12))


def zero_crossing_rate(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Zero crossings per sample of each 20 ms frame."""
    signs = np.signbit(_frames(pcm, rate))
    return np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / max(signs.shape[1] - 1, 1)


def voiced_frames(pcm: np.ndarray, rate: int, energy_dbfs: float) -> np.ndarray:
    """Per 20 ms frame: loud enough and not noise-like."""
    return (frame_dbfs(pcm, rate) > energy_dbfs) & (zero_crossing_rate(pcm, rate) <= MAX_ZCR)


def voiced_ratio(pcm: np.ndarray, rate: int, energy_dbfs: float) -> float:
    """Share of 20 ms frames that are voiced; 0 for less than one frame."""
    voiced = voiced_frames(pcm, rate, energy_dbfs)
    return float(np.mean(voiced)) if len(voiced) else 0.0
