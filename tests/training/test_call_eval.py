"""Call-level evaluation: calls built per speaker, scored through the daemon's engine and policy, judged as an agent would."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from emovoice_daemon.config import Config, EscalationConfig
from training.call_eval import call_metrics, misses, score_calls
from training.calls import CallPlan, build_calls
from training.corpora import Utterance
from training.policy_search import choose, replay

from tests.support.scripted import CALM_HZ, ANGRY_HZ, ToneClassifier

RATE = 8000


def clip(freq: float, seconds: float = 2.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def corpus(speakers: int = 3) -> tuple[list[Utterance], list[np.ndarray]]:
    """Per speaker: 4 neutral clips (a 400 Hz tone: NEUTRAL to the scripted classifier), 4 angry (1200 Hz),
    3 happy (400 Hz too: happy is not upset) and 2 sad (1200 Hz: never used in calls)."""
    utts, waves = [], []
    for s in range(speakers):
        for emotion, freq, n in (("NEU", CALM_HZ, 4), ("ANG", ANGRY_HZ, 4), ("HAP", CALM_HZ, 3), ("SAD", ANGRY_HZ, 2)):
            for i in range(n):
                utts.append(Utterance(Path(f"{s}_{emotion}_{i}.wav"), "NEUTRAL", emotion, f"x:{s}", "x"))
                waves.append(clip(freq))
    return utts, waves


def test_calls_are_built_per_speaker_from_calm_and_angry_clips_only() -> None:
    utts, waves = corpus()
    calls = build_calls(utts, waves, ["x:0", "x:1", "x:2"], calls_per_kind=5, plan=CallPlan(), condition="clean")
    kinds = {k: [c for c in calls if c.kind == k] for k in ("calm", "calm_angry", "angry", "calm_happy")}
    assert all(len(v) == 6 for v in kinds.values())  # 5 per kind rounded up to 2 calls for each of 3 speakers
    for c in kinds["calm"]:
        assert c.onset_s is None and len(c.audio) / RATE >= 60.0
        spectrum = np.abs(np.fft.rfft(c.audio))
        assert spectrum[int(ANGRY_HZ * len(c.audio) / RATE)] < 1e-3 * spectrum.max()  # no angry (or sad) clip in it
    for c in kinds["calm_angry"]:
        onset = int(c.onset_s * RATE)
        assert 20.0 <= c.onset_s and len(c.audio) / RATE >= c.onset_s + 30.0
        before = np.abs(np.fft.rfft(c.audio[:onset]))
        assert before[int(ANGRY_HZ * onset / RATE)] < 1e-3 * before.max()  # calm until the onset...
        assert np.abs(c.audio[onset:onset + 100]).max() > 0.2  # ... where the first angry clip starts
    assert all(c.onset_s is not None and c.onset_s < 1.6 for c in kinds["angry"])
    again = build_calls(utts, waves, ["x:0", "x:1", "x:2"], calls_per_kind=5, condition="clean")
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(calls, again))  # seeded


def test_production_path_judges_each_kind_of_call_and_the_policy_replay_agrees() -> None:
    utts, waves = corpus(2)
    calls = build_calls(utts, waves, ["x:0", "x:1"], calls_per_kind=2, condition="telephony")
    config = Config()
    outcomes = score_calls(calls, config, ToneClassifier())
    m = call_metrics(outcomes)
    assert m["calls"] == {"calm": 2, "calm_angry": 2, "angry": 2, "calm_happy": 2}
    assert m["calm_alert_pct"] == 0.0 and m["calm_any_pct"] == 0.0 and m["happy_alert_pct"] == 0.0
    assert m["ramp_detected_pct"] == 100.0 and m["ramp_alert_before_onset_pct"] == 0.0
    assert 0 < m["ramp_delay_median_s"] <= 8.0 and m["angry_within_15s_pct"] == 100.0
    assert m["p_negative_calm_p10_50_90"][2] < 0.2 < 0.8 < m["p_negative_angry_p10_50_90"][0]
    assert misses(m) == []
    for o in outcomes:  # replaying the policy over the scores gives exactly what the daemon raised
        assert replay(o, config.escalation).raised == o.raised
    quiet = dataclasses.replace(config.escalation, enter=0.99, alert=0.99)
    assert call_metrics([replay(o, quiet) for o in outcomes])["ramp_detected_pct"] == 0.0
    values, figures = choose(outcomes, EscalationConfig())
    assert figures["calm_alert_pct"] == 0.0 and figures["ramp_detected_pct"] == 100.0 and values["trend_rise"] == 0.0


def test_misses_names_each_target_missed() -> None:
    m = {"calm_alert_pct": 20.0, "calm_any_pct": 10.0, "ramp_detected_pct": 80.0, "ramp_delay_median_s": 5.0,
         "ramp_alert_before_onset_pct": 0.0, "angry_within_15s_pct": 90.0}
    assert misses(m) == ["calm_alert_pct 20.0 (<= 10.0)", "ramp_detected_pct 80.0 (>= 85.0)"]


def test_choosing_settings_on_test_speakers_is_refused() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "training.cli", "calls", "--choose", "x.json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "add --speakers val" in out.stderr


def test_feature_memo_never_serves_another_encodings_features(tmp_path: Path) -> None:
    """A memo written by the fp32 whole-window model is not read back for its chunked or int8 forms."""
    import torch

    from emovoice_daemon.config import ModelConfig
    from emovoice_daemon.scoring.models.loader import load_classifier
    from tests.scoring.test_whisper import tiny_encoder_dir, tiny_head_dir
    from training.call_eval import FeatureMemo

    head = tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc"))
    x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((1, 16000))).astype(np.float32))
    memo_file = tmp_path / "memo.npz"
    plain = load_classifier(ModelConfig(path=str(head), adapt=False))
    memo = FeatureMemo(plain, memo_file)
    plain.model.pooled_features(x)
    memo.save()
    for variant in ("chunked", "int8"):
        clf = load_classifier(ModelConfig(path=str(head), adapt=False, quantize_int8=variant == "int8"))
        if variant == "chunked":
            clf.model.config.chunk_s = 0.5
        other = FeatureMemo(clf, memo_file)
        clf.model.pooled_features(x)
        assert other._added == 1, variant  # computed, not read from the fp32 whole-window entry
