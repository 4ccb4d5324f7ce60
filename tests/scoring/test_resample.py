"""Resampling: anti-aliasing, gain, and chunk-size invariance of the streaming resampler."""
from __future__ import annotations

import numpy as np
import pytest

from emovoice_daemon.scoring.resample import StreamResampler, resample


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12))


def test_passband_tone_keeps_its_level_8k_to_16k() -> None:
    out = resample(tone(1000, 8000), 8000, 16000)
    assert len(out) == 16000
    assert abs(rms_db(out[1000:-1000]) - rms_db(tone(1000, 8000))) < 0.1


@pytest.mark.parametrize("freq", [5000, 6000, 7500])
def test_content_above_the_new_nyquist_is_removed_16k_to_8k(freq: int) -> None:
    out = resample(tone(freq, 16000), 16000, 8000)
    assert rms_db(out[500:-500]) - rms_db(tone(freq, 16000)) < -50


def test_streaming_is_independent_of_chunk_size() -> None:
    x = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)
    whole = StreamResampler(8000, 16000).process(x)
    r = StreamResampler(8000, 16000)
    chunked = np.concatenate([r.process(x[i:i + 160]) for i in range(0, len(x), 160)])
    np.testing.assert_allclose(chunked, whole, atol=1e-3)
    # a ratio with both up- and down-sampling, fed in chunks that are not a multiple of the decimation
    r = StreamResampler(12000, 8000)
    y = (np.random.default_rng(1).standard_normal(12000) * 3000).astype(np.int16)
    odd = np.concatenate([r.process(y[i:i + 7]) for i in range(0, len(y), 7)])
    np.testing.assert_allclose(odd, StreamResampler(12000, 8000).process(y), atol=1e-3)


def test_streaming_matches_offline_after_the_filter_delay() -> None:
    x = tone(700, 8000)
    stream = StreamResampler(8000, 16000).process(x)
    offline = resample(x, 8000, 16000)
    delay = int(np.argmax(np.correlate(stream[:4000], offline[:2000], "valid")))
    np.testing.assert_allclose(stream[delay + 200:delay + 15000], offline[200:15000], atol=1e-3)


def test_empty_chunk_gives_no_samples() -> None:
    assert len(StreamResampler(16000, 8000).process(np.zeros(0, np.int16))) == 0


def test_same_rate_is_identity() -> None:
    x = np.arange(-5, 5, dtype=np.int16)
    np.testing.assert_array_equal(StreamResampler(8000, 8000).process(x), x)
    np.testing.assert_array_equal(resample(x, 8000, 8000), x)
