"""Speech gating: how much of a window is voiced, by frame energy."""
from __future__ import annotations

import numpy as np

FRAME_S = 0.02


def frame_dbfs(pcm: np.ndarray, rate: int) -> np.ndarray:
    """RMS level in dBFS of each 20 ms frame of int16 audio."""
    n = int(rate * FRAME_S)
    frames = pcm[: len(pcm) // n * n].astype(np.float32).reshape(-1, n) / 32768.0
    rms = np.sqrt(np.mean(frames * frames, axis=1) + 1e-12)
    return 20 * np.log10(rms)


def voiced_ratio(pcm: np.ndarray, rate: int, energy_dbfs: float) -> float:
    """Share of 20 ms frames louder than ``energy_dbfs``."""
    levels = frame_dbfs(pcm, rate)
    return float(np.mean(levels > energy_dbfs)) if len(levels) else 0.0
