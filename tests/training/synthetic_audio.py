"""Synthetic audio in each corpus's naming convention, and the shared-data location (helpers for tests/training)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# Class-dependent synthetic "speech": NEGATIVE = loud broadband buzz, NEUTRAL = low hum-like tone, POSITIVE = rising chirp.
CLASS_SIGNAL = {"NEGATIVE": "buzz", "NEUTRAL": "tone", "POSITIVE": "chirp"}


def require_shared(*parts: str) -> Path:
    """The shared-data path, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path} is missing (data tests run only where the corpora are mounted)")
    return path


def synth(kind: str, seconds: float, rate: int, seed: int) -> np.ndarray:
    """A short signal whose spectrum depends on ``kind``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(0.9, 1.1)
    if kind == "buzz":
        x = sum(np.sin(2 * np.pi * 180 * f0 * k * t) / k for k in range(1, 15)) * 0.3 + 0.05 * rng.standard_normal(len(t))
    elif kind == "tone":
        x = 0.2 * np.sin(2 * np.pi * 400 * f0 * t) + 0.005 * rng.standard_normal(len(t))
    else:
        x = 0.3 * np.sin(2 * np.pi * (600 * f0 + 1200 * t / seconds) * t) + 0.005 * rng.standard_normal(len(t))
    return (x / max(1.0, np.abs(x).max() * 1.05)).astype(np.float32)


def write(path: Path, x: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


CREMAD_EMO = {"ANG": "NEGATIVE", "DIS": "NEGATIVE", "FEA": "NEGATIVE", "SAD": "NEGATIVE", "NEU": "NEUTRAL", "HAP": "POSITIVE"}


def make_cremad(root: Path, actors: int = 4, sentences: tuple[str, ...] = ("DFA", "IEO"), seconds: float = 1.0) -> Path:
    """CREMA-D layout: AudioWAV/<actor>_<sentence>_<EMO>_<level>.flac plus VideoDemographics.csv."""
    rows = ['"ActorID","Age","Sex","Race","Ethnicity"']
    for a in range(actors):
        actor = 1001 + a
        rows.append(f'{actor},30,"{"Male" if a % 2 == 0 else "Female"}","Caucasian","Not Hispanic"')
        for s, sentence in enumerate(sentences):
            for e, (emo, label) in enumerate(CREMAD_EMO.items()):
                x = synth(CLASS_SIGNAL[label], seconds, 8000, seed=actor * 100 + s * 10 + e)
                write(root / "AudioWAV" / f"{actor}_{sentence}_{emo}_XX.flac", x, 8000)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "VideoDemographics.csv").write_text("\n".join(rows) + "\n")
    return root


