"""Refit on site verdicts (issue #26): a tiny Whisper-encoder model, a few synthetic verdict calls."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import Wav2Vec2FeatureExtractor

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.learning import refit as refit_module
from emovoice_daemon.learning.refit import MAX_REPLAY_BYTES, REPLAY_FILE, SiteVerdicts, refit, write_replay
from emovoice_daemon.scoring.models.compact import CompactConfig, CompactForAudioClassification
from emovoice_daemon.scoring.models.loader import CASCADE_DIR, COMPACT_DIR, load_classifier, read_escalation
from tests.scoring.test_whisper import tiny_encoder_dir, tiny_head_dir

FEATURES = 64  # tiny encoder: 2 hidden states x (mean, std) x d_model 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    head = tiny_head_dir(root / "head", tiny_encoder_dir(root / "enc"), head_hidden=16)
    (head / "escalation.json").write_text(json.dumps({"smoothing": 0.7, "enter": 0.7, "exit": 0.5, "alert": 0.8,
                                                      "min_duration_s": 1.0}))
    # the replay set: training windows, labelled as the shipped head labels them; a third of them guard windows
    tensors = load_file(str(head / "model.safetensors"))
    feats = tensors["feature_mean"] + 3 * np.random.default_rng(5).standard_normal((3000, FEATURES)).astype(np.float32)
    z = (feats - tensors["feature_mean"]) / tensors["feature_std"]
    hidden = np.maximum(z @ tensors["head.0.weight"].T + tensors["head.0.bias"], 0)
    labels = (hidden @ tensors["head.2.weight"].T + tensors["head.2.bias"]).argmax(1)
    write_replay(head, feats, labels, np.arange(3000) % 3 == 0)
    return head


def site_calls(n_calls: int, seed: int, signal: bool = True, features: int = FEATURES) -> SiteVerdicts:
    """Calls of 12 windows; every other call upset from its 4th window. With ``signal`` upset windows lie along
    one direction of the feature space (what the site's anger sounds like), else they sound like the rest."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).standard_normal(features).astype(np.float32)
    feats, upset, calls = [], [], []
    for c in range(n_calls):
        flags = np.arange(12) >= 3 if c % 2 else np.zeros(12, bool)
        x = rng.standard_normal((12, features)).astype(np.float32)
        x += 3.0 * signal * flags[:, None] * direction
        feats.append(x)
        upset.append(flags)
        calls += [f"call-{seed}-{c}"] * 12
    return SiteVerdicts(np.concatenate(feats), np.concatenate(upset), np.array(calls))


def test_refit_learns_the_sites_anger_and_writes_a_loadable_versioned_directory(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "v0001"
    report = refit(model_dir, site_calls(12, 0), out)
    assert report.improved, report.summary()
    assert report.after["mistakes"] < report.before["mistakes"]
    assert report.after["upset_alerted_pct"] > report.before["upset_alerted_pct"] or report.after["calm_alert_pct"] < report.before["calm_alert_pct"]
    assert report.before["replay_uar"] == 1.0 and report.after["replay_uar"] >= 0.98  # the training classes kept
    assert "improved" in report.summary()
    # the directory loads as the daemon loads it; only the last layer and the thresholds changed
    clf = load_classifier(ModelConfig(path=str(out), adapt=False))
    assert clf.predict(np.zeros((1, 16000), np.float32)).shape == (1, 3)
    old, new = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(old) == set(new)
    assert np.array_equal(old["head.0.weight"], new["head.0.weight"]) and not np.array_equal(old["head.2.weight"], new["head.2.weight"])
    assert set(read_escalation(out)) >= {"enter", "exit", "alert"}
    learned = json.loads((out / "learned.json").read_text())
    assert (learned["verdict_calls"], learned["upset_calls"], learned["verdict_windows"]) == (12, 6, 144)
    assert learned["parent"] == str(model_dir.resolve()) and learned["improved"] is True
    assert (out / REPLAY_FILE).is_file()  # a refit of the refit still remembers the training classes
    # on calls it never saw, the refit model reads the site's anger as NEGATIVE and its calm as not; its parent did not
    new_calls = site_calls(4, 7)
    parent = load_classifier(ModelConfig(path=str(model_dir), adapt=False))
    z = torch.from_numpy(((new_calls.features - new["feature_mean"]) / new["feature_std"]).astype(np.float32))
    upset, calm = (negative(clf, z)[m].mean() for m in (new_calls.upset, ~new_calls.upset))
    assert upset > 0.5 > calm and negative(parent, z)[new_calls.upset].mean() < 0.5


def negative(clf, z: torch.Tensor) -> np.ndarray:  # noqa: ANN001
    with torch.no_grad():
        return clf.probs_from_logits(clf.model.classify(z))[:, 0]


def test_replay_set_is_float16_class_balanced_within_its_budget(model_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with np.load(model_dir / REPLAY_FILE) as z:
        assert z["hidden"].dtype == np.float16 and z["hidden"].shape == (3000, 16)  # all of it: under the budget
        assert (z["guard"].sum(), z["hidden"].nbytes <= MAX_REPLAY_BYTES) == (1000, True)
    small = tmp_path / "small"
    shutil.copytree(model_dir, small)
    monkeypatch.setattr(refit_module, "MAX_REPLAY_BYTES", 2 * 16 * 3 * 90)  # 60 replayed, 30 guard windows a class
    rng = np.random.default_rng(0)
    write_replay(small, rng.standard_normal((900, FEATURES)), np.arange(900) % 3, np.arange(900) >= 600)
    with np.load(small / REPLAY_FILE) as z:
        assert list(np.bincount(z["labels"][~z["guard"]])) == [60] * 3
        assert list(np.bincount(z["labels"][z["guard"]])) == [30] * 3


def test_noise_is_not_called_an_improvement(model_dir: Path, tmp_path: Path) -> None:
    report = refit(model_dir, site_calls(12, 1, signal=False), tmp_path / "noise")
    assert not report.improved, report.summary()
    assert json.loads((tmp_path / "noise" / "learned.json").read_text())["improved"] is False


@pytest.mark.parametrize("calls", [1, 3])
def test_too_few_verdict_calls_is_one_line_value_error(model_dir: Path, tmp_path: Path, calls: int) -> None:
    with pytest.raises(ValueError, match="too little to learn from") as err:
        refit(model_dir, site_calls(calls, 2), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_other_models_and_mismatched_features_are_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only models whose head reads standardised features"):
        refit(COMPACT_DIR, site_calls(8, 3), tmp_path / "a")  # the compact default: no feature_norm
    with pytest.raises(ValueError, match="not 'emovoice-cascade'"):
        refit(CASCADE_DIR, site_calls(8, 3), tmp_path / "a")  # a cascade has no head of its own
    v = site_calls(8, 3)
    with pytest.raises(ValueError, match="values per window"):
        refit(model_dir, SiteVerdicts(v.features[:, :10], v.upset, v.calls), tmp_path / "b")
    with pytest.raises(ValueError, match="disagree"):
        SiteVerdicts(v.features, v.upset[:-1], v.calls)


def test_validation_keeps_a_callers_calls_together(model_dir: Path, tmp_path: Path) -> None:
    v = site_calls(12, 0)
    two = SiteVerdicts(v.features, v.upset, v.calls, np.where(np.arange(len(v.calls)) < 72, "ann", "bob"))
    assert refit(model_dir, two, tmp_path / "two").improved  # the site's anger, learnt from one caller, heard in the other
    one = SiteVerdicts(v.features, v.upset, v.calls, np.full(len(v.calls), "ann"))
    with pytest.raises(ValueError, match="too little to learn from: 1 callers"):
        refit(model_dir, one, tmp_path / "one")  # a single caller cannot be validated on anyone else


def test_a_compact_student_refits_as_an_encoder_head_with_the_same_head(model_dir: Path, tmp_path: Path) -> None:
    """A feature_norm compact model (the distilled student) refits like an encoder head: given the encoder head's
    layers and statistics (as its head and batch norm), the same verdicts give the same refit, and it loads."""
    head = load_file(str(model_dir / "model.safetensors"))
    model = CompactForAudioClassification(CompactConfig(conv2d_channels=[4, 4], conv1d_channels=[8, FEATURES // 2],
                                                        hidden_size=16, feature_norm=True))
    with torch.no_grad():
        model.norm.running_mean.copy_(torch.from_numpy(head["feature_mean"]))
        model.norm.running_var.copy_(torch.from_numpy(head["feature_std"] ** 2 - model.norm.eps))
        for mine, theirs in ((model.head[1], "head.0"), (model.head[4], "head.2")):
            mine.weight.copy_(torch.from_numpy(head[f"{theirs}.weight"]))
            mine.bias.copy_(torch.from_numpy(head[f"{theirs}.bias"]))
    student = tmp_path / "student"
    model.eval().save_pretrained(student)
    Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=False).save_pretrained(student)
    for f in ("escalation.json", REPLAY_FILE):
        shutil.copy2(model_dir / f, student / f)
    (student / "config.json").write_text(json.dumps({**json.loads((student / "config.json").read_text()),
                                                     "temperature": json.loads((model_dir / "config.json").read_text())
                                                     .get("temperature", 1.0)}))
    verdicts = site_calls(12, 0)
    theirs, mine = refit(model_dir, verdicts, tmp_path / "enc"), refit(student, verdicts, tmp_path / "v0001")
    assert mine.improved and mine.before == pytest.approx(theirs.before, abs=1e-3)
    assert mine.after == pytest.approx(theirs.after, abs=1e-3)
    old, new = load_file(str(student / "model.safetensors")), load_file(str(tmp_path / "v0001" / "model.safetensors"))
    assert np.array_equal(old["head.1.weight"], new["head.1.weight"])
    np.testing.assert_allclose(new["head.4.weight"], load_file(str(tmp_path / "enc" / "model.safetensors"))["head.2.weight"], atol=1e-3)
    clf = load_classifier(ModelConfig(path=str(tmp_path / "v0001"), adapt=False))
    assert clf.predict(np.zeros((1, 24000), np.float32)).shape == (1, 3)
