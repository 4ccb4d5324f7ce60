"""A cascade directory: the first model on every window, the second where the first's P(NEGATIVE) reaches the gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from emovoice_daemon.config import EngineConfig, ModelConfig, PipelineConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.scoring.models.cascade import Cascade, sampled_window
from emovoice_daemon.scoring.models.loader import CASCADE_DIR as SHIPPED, ModelError, load_classifier, validate_model
from emovoice_daemon.scoring.models.compact import CompactConfig, CompactForAudioClassification
from emovoice_daemon.scoring.resample import resample
from tests.conftest import fetched_encoder

from .test_whisper import tiny_encoder_dir, tiny_head_dir


def tiny_student_dir(path: Path) -> Path:
    """A compact model at 8 kHz with standardised pooled features (random weights, moved feature statistics)."""
    torch.manual_seed(0)
    model = CompactForAudioClassification(CompactConfig(conv2d_channels=[4, 4], conv1d_channels=[8, 8], hidden_size=8,
                                                        feature_norm=True))
    model.train()
    model(input_values=torch.from_numpy(windows(4)))
    model.eval().save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=False).save_pretrained(path)
    return path


def windows(n: int, seconds: float = 1.0) -> np.ndarray:
    """``n`` different 8 kHz windows: harmonic tones of rising pitch and level."""
    t = np.arange(int(8000 * seconds)) / 8000
    return np.stack([(0.05 + 0.1 * i) * sum(np.sin(2 * np.pi * k * (110 + 35 * i) * t) / k for k in range(1, 6))
                     for i in range(n)]).astype(np.float32)


def cascade_dir(path: Path, first: str, second: str, gate: object, **more: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "emovoice-cascade", "first": first, "second": second,
                                                  "gate": gate, **more}))
    return path


@pytest.fixture
def stages(tmp_path: Path) -> tuple[Path, Path]:
    return tiny_student_dir(tmp_path / "student"), tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc"))


def second_windows() -> float:
    return metrics.REGISTRY.get_sample_value("emovoice_cascade_second_windows_total") or 0.0


def test_the_second_model_scores_only_the_windows_the_first_suspects(tmp_path: Path, stages: tuple[Path, Path]) -> None:
    x = windows(6)
    first = load_classifier(ModelConfig(path=str(stages[0]), adapt=False))
    second = load_classifier(ModelConfig(path=str(stages[1]), adapt=False))
    p_first = first.predict(x)
    gate = float(np.sort(p_first[:, 0])[2:4].mean())  # three windows above it, three below
    suspected = p_first[:, 0] >= gate
    assert suspected.sum() == 3
    cascade = load_classifier(ModelConfig(path=str(cascade_dir(tmp_path / "c", "../student", "../head", gate)),
                                          adapt=False))
    assert isinstance(cascade, Cascade) and cascade.sampling_rate == 8000
    before = second_windows()
    probs, feats = cascade.predict_with_features(x)
    assert second_windows() - before == 3
    np.testing.assert_allclose(probs[~suspected], p_first[~suspected], atol=1e-6)
    np.testing.assert_allclose(probs[suspected], second.predict(resample(x[suspected], 8000, 16000)), atol=1e-5)
    np.testing.assert_allclose(feats, first.predict_with_features(x)[1], atol=1e-6)  # the first's features are kept


def test_the_second_learns_the_line_from_the_sampled_windows_only(tmp_path: Path, stages: tuple[Path, Path]) -> None:
    x = np.concatenate([windows(6), 0.5 * windows(6)])
    sampled = np.array([sampled_window(w, 0.5) for w in x])
    assert 0 < sampled.sum() < len(x)
    legs = [f"leg{i}" for i in range(len(x))]
    for gate, heard in ((1.0, sampled), (1e-6, np.ones(len(x), bool))):  # none gated / every window gated
        cascade = load_classifier(ModelConfig(path=str(cascade_dir(tmp_path / f"c{gate}", "../student", "../head",
                                                                   gate, sample=0.5)), site_stats_path=""))
        second = cascade.second.adapter
        before = second_windows()
        probs = cascade.predict(x, legs)
        assert second_windows() - before == heard.sum()
        assert second.site.count == 200 + 2 * sampled.sum()  # the prior's 200, each sampled window counting 1 / 0.5
        assert set(second.legs) == {leg for leg, s in zip(legs, sampled) if s}
        assert set(cascade.first.adapter.legs) == set(legs) and probs.shape == (len(x), 3)


async def test_each_stage_learns_the_line_from_the_windows_it_hears(tmp_path: Path, stages: tuple[Path, Path]) -> None:
    path = cascade_dir(tmp_path / "c", str(stages[0]), str(stages[1]), 1e-6, sample=0.5)
    state = tmp_path / "state" / "site.npz"
    cascade = load_classifier(ModelConfig(path=str(path), site_stats_path=str(state)))
    assert [a.state_path for a in cascade.adapters] == [state, tmp_path / "state" / "site.second.npz"]
    engine = ScoringEngine(cascade, PipelineConfig(window_s=1.0, hop_s=0.5, speech_gate=False), EngineConfig())
    await engine.start()
    results: dict[str, list] = {"a": [], "b": []}
    for i, leg in enumerate(results):
        engine.open_leg(leg, results[leg].append)
        engine.push(leg, (windows(3, 2.0)[i + 1] * 32767).astype(np.int16))
        await engine.close_leg(leg)
    await engine.stop()
    assert all(len(r) == 3 and all(w.probs is not None and w.features.shape == (16,) for w in r)
               for r in results.values())
    for adapter in cascade.adapters:
        assert adapter.legs == {} and adapter.state_path.is_file() and adapter.site.count > 200  # heard, saved
    assert load_classifier(ModelConfig(path=str(path), site_stats_path=str(state))).second.adapter.site.count > 200


def test_the_cascade_chooses_int8_for_both_models_unless_the_config_says(tmp_path: Path,
                                                                        stages: tuple[Path, Path]) -> None:
    path = cascade_dir(tmp_path / "c", "../student", "../head", 0.5, quantize_int8=True)

    def quantized(cascade: Cascade) -> list[bool]:
        return [any("quantized" in type(m).__module__ for m in stage.model.modules())
                for stage in (cascade.first, cascade.second)]

    assert quantized(load_classifier(ModelConfig(path=str(path), adapt=False))) == [True, True]
    assert quantized(load_classifier(ModelConfig(path=str(path), adapt=False, quantize_int8=False))) == [False, False]


@pytest.mark.parametrize("first, second, gate, message", [
    ("../student", "../head", 0, r"gate must be a number in \(0, 1\]"),
    ("../student", "../head", "high", r"gate must be a number"),
    ("", "../head", 0.2, r"first must name a model directory"),
    ("../student", "../head", {"gate": 0.2, "sample": 1.0}, r"sample must be a number in \[0, 1\)"),
    ("../student", "../head", {"gate": 0.2, "quantize_int8": "yes"}, r"quantize_int8 must be true or false"),
    ("../student", "../nowhere", 0.2, r"nowhere: model directory does not exist"),
    ("../student", "../inner", 0.2, r"is a cascade itself"),
])
def test_a_bad_cascade_is_one_clear_error(tmp_path: Path, stages: tuple[Path, Path], first: str, second: str,
                                          gate: object, message: str) -> None:
    cascade_dir(tmp_path / "inner", "../student", "../head", 0.5)
    path = cascade_dir(tmp_path / "c", first, second, **(gate if isinstance(gate, dict) else {"gate": gate}))
    for check in (validate_model, load_classifier):
        with pytest.raises(ModelError, match=message):
            check(ModelConfig(path=str(path)))


def test_the_shipped_cascade_names_the_shipped_student_and_encoder() -> None:
    config = json.loads((SHIPPED / "config.json").read_text())
    assert (SHIPPED / config["first"]).resolve().name == "student" and (SHIPPED / config["second"]).resolve().name == "encoder"
    escalation = validate_model(ModelConfig(path=str(SHIPPED)))
    assert escalation == json.loads((SHIPPED / "escalation.json").read_text()) and 0 < config["gate"] < 1
    card = (SHIPPED / "README.md").read_text()
    for needle in ("gate", "sample", "calls --choose", "fetch-encoder", "line-conditions"):
        assert needle in card, needle


def test_the_shipped_cascade_scores_with_the_fetched_encoder(tmp_path: Path) -> None:
    fetched_encoder()
    cascade = load_classifier(ModelConfig(path=str(SHIPPED), site_stats_path=str(tmp_path / "site.npz")))
    x = windows(4, 3.0)
    probs, feats = cascade.predict_with_features(x, ["a", "b", "c", "d"])
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5) and feats.shape == (4, 512)
    assert cascade.first.adapter.site.count > 200
