"""Speech gating by energy and zero crossings."""
from __future__ import annotations

import numpy as np

from emovoice_daemon.scoring.vad import voiced_ratio

from .conftest import SHARED, read_8k


def tone(freq: float, dbfs: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (np.sin(2 * np.pi * freq * t) * 32767 * 10 ** (dbfs / 20) * np.sqrt(2)).astype(np.int16)


def test_loud_voiced_sound_counts_quiet_and_noisy_do_not() -> None:
    assert voiced_ratio(tone(200, -20), 8000, -45) == 1.0
    assert voiced_ratio(tone(200, -60), 8000, -45) == 0.0
    assert voiced_ratio(np.zeros(8000, dtype=np.int16), 8000, -45) == 0.0
    hiss = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)  # -21 dBFS but noise
    assert voiced_ratio(hiss, 8000, -45) == 0.0


def test_half_speech_half_silence_is_half_voiced() -> None:
    pcm = np.concatenate([tone(180, -25, 0.5), np.zeros(4000, dtype=np.int16)])
    assert voiced_ratio(pcm, 8000, -45) == 0.5


def test_less_than_a_frame_is_unvoiced() -> None:
    assert voiced_ratio(tone(200, -20, 0.01), 8000, -45) == 0.0


def test_real_speech_is_mostly_voiced(speech_8k: np.ndarray) -> None:
    assert 0.3 < voiced_ratio(speech_8k, 8000, -45) < 0.98
    source = SHARED / "asterisk" / "source_speech_8k.wav"
    if source.exists():
        assert 0.3 < voiced_ratio(read_8k(source), 8000, -45) < 0.98
