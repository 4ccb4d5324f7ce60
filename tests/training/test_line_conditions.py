"""Line conditions and machine speech: codecs keep speech, what the head trains on is never what is evaluated."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from emovoice_daemon.tools.demo import bundled_calls
from training import machine_speech as ms
from training.cli import main as cli_main
from training.line_conditions import IMPAIRMENTS, g722_roundtrip


def speech(seconds: float) -> np.ndarray:
    return bundled_calls()[0].audio[: int(seconds * 8000)].astype(np.float32) / 32768.0


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt install ffmpeg; ./dev test does)")
def test_g722_chain_keeps_telephone_speech() -> None:
    x = speech(2.0)
    y = g722_roundtrip(x)
    assert len(y) == len(x)
    best = max(np.corrcoef(x[100:-100], np.roll(y, -lag)[100:-100])[0, 1] for lag in range(30))  # codec delay ~1.4 ms
    assert best > 0.95
    assert abs(20 * np.log10(np.std(y) / np.std(x))) < 1.0
    assert "g722" in IMPAIRMENTS


def test_prompt_halves_are_disjoint_and_stable(tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / "en"
    folder.mkdir()
    for i in range(40):
        (folder / f"p{i}.wav").write_bytes(b"")
    train, held = (ms.prompt_files("en", e, tmp_path) for e in (False, True))
    assert not set(train) & set(held) and len(train) + len(held) == 40
    assert 10 <= len(held) <= 30
    assert held == ms.prompt_files("en", True, tmp_path)


def test_espeak_training_voices_are_another_family_than_the_evaluation_voices() -> None:
    train_languages = {v.split("+")[0] for v in ms.ESPEAK_TRAIN_VOICES}
    eval_languages = {v.split("+")[0] for v in ms.ESPEAK_EVAL_VOICES}
    train_variants = {v.split("+")[1] for v in ms.ESPEAK_TRAIN_VOICES}
    eval_variants = {v.split("+")[1] for v in ms.ESPEAK_EVAL_VOICES}
    assert all(lang.startswith("en") for lang in eval_languages)
    assert not any(lang.startswith("en") for lang in train_languages)
    assert not train_variants & eval_variants


def test_unknown_source_or_missing_package_is_one_clear_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unknown machine-speech source"):
        ms.training_windows("prompts-xx", 10.0)
    monkeypatch.setattr(ms, "PROMPTS_ROOT", tmp_path)
    with pytest.raises(SystemExit, match="apt install asterisk-core-sounds-fr-wav"):
        cli_main(["head", "--out", str(tmp_path / "m"), "--machine-speech", "prompts-fr"])
