"""Anti-aliased rational resampling: offline (whole signal) and streaming (chunk by chunk).

Both use the same windowed-sinc low-pass FIR, so a stream resampled in 20 ms chunks
equals the same signal resampled at once (after the filter's fixed delay).
torchaudio has no CPU build for this machine, so this is scipy/numpy.
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
from scipy import signal

_HALF_TAPS_PER_PHASE = 16


@lru_cache(maxsize=32)
def lowpass(up: int, down: int) -> np.ndarray:
    """Kaiser-windowed low-pass FIR for an up/down polyphase resampler (gain ``up``)."""
    cutoff = 1.0 / max(up, down)
    taps = 2 * _HALF_TAPS_PER_PHASE * max(up, down) + 1
    return (signal.firwin(taps, cutoff, window=("kaiser", 8.0)) * up).astype(np.float64)


def _ratio(src_rate: int, dst_rate: int) -> tuple[int, int]:
    g = gcd(src_rate, dst_rate)
    return dst_rate // g, src_rate // g


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole signal, or each row of a batch, (int16 or float) to ``dst_rate``; returns float32 in the
    input's scale."""
    x = np.asarray(x, dtype=np.float32)
    if src_rate == dst_rate:
        return x
    up, down = _ratio(src_rate, dst_rate)
    # resample_poly scales a given filter by ``up`` itself: hand it the unity-gain prototype
    return signal.resample_poly(x, up, down, axis=-1, window=lowpass(up, down) / up).astype(np.float32)


class StreamResampler:
    """Stateful resampler for live audio: feed chunks, get the resampled continuation."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.up, self.down = _ratio(src_rate, dst_rate)
        self._h = lowpass(self.up, self.down) if (self.up, self.down) != (1, 1) else np.ones(1)
        self._zi = np.zeros(len(self._h) - 1)
        self._phase = 0  # index, in the upsampled stream, of the next output sample to keep

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Resample one chunk; returns float32 samples, delayed by the filter's group delay."""
        x = np.asarray(chunk, dtype=np.float64)
        if self.up == 1 and self.down == 1 or not len(x):
            return x.astype(np.float32)
        stuffed = np.zeros(len(x) * self.up)
        stuffed[:: self.up] = x
        y, self._zi = signal.lfilter(self._h, 1.0, stuffed, zi=self._zi)
        out = y[self._phase :: self.down]
        self._phase = (self._phase - len(stuffed)) % self.down
        return out.astype(np.float32)
