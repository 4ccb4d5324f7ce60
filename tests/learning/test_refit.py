"""Refit on site verdicts (issue #26): a tiny Whisper-encoder model, a few synthetic verdict calls."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.learning.refit import REPLAY_FILE, SiteVerdicts, refit
from emovoice_daemon.scoring.models.loader import COMPACT_DIR, load_classifier, read_escalation
from tests.scoring.test_whisper import tiny_encoder_dir, tiny_head_dir

FEATURES = 64  # tiny encoder: 2 hidden states x (mean, std) x d_model 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    head = tiny_head_dir(root / "head", tiny_encoder_dir(root / "enc"), head_hidden=16)
    (head / "escalation.json").write_text(json.dumps({"smoothing": 0.7, "enter": 0.7, "exit": 0.5, "alert": 0.8,
                                                      "min_duration_s": 1.0}))
    # the replay set: training windows' hidden activations, labelled as the shipped head labels them
    hidden = np.random.default_rng(5).random((300, 16)).astype(np.float16)
    last = load_file(str(head / "model.safetensors"))
    labels = (hidden.astype(np.float32) @ last["head.2.weight"].T + last["head.2.bias"]).argmax(1)
    np.savez(head / REPLAY_FILE, hidden=hidden, labels=labels.astype(np.int8))
    return head


def site_calls(n_calls: int, seed: int, signal: bool = True) -> SiteVerdicts:
    """Calls of 12 windows; every other call upset from its 4th window. With ``signal`` upset windows lie along
    one direction of the feature space (what the site's anger sounds like), else they sound like the rest."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).standard_normal(FEATURES).astype(np.float32)
    feats, upset, calls = [], [], []
    for c in range(n_calls):
        flags = np.arange(12) >= 3 if c % 2 else np.zeros(12, bool)
        x = rng.standard_normal((12, FEATURES)).astype(np.float32)
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
    # the refit model's P(NEGATIVE) follows the site's anger on calls it never saw
    new_calls = site_calls(4, 7)
    z = (new_calls.features - new["feature_mean"]) / new["feature_std"]
    with torch.no_grad():
        logits = clf.model.classify(torch.from_numpy(z.astype(np.float32))).numpy()
    assert np.mean(logits.argmax(1)[new_calls.upset] == 0) > 0.8 and np.mean(logits.argmax(1)[~new_calls.upset] == 0) < 0.2


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
    with pytest.raises(ValueError, match="only Whisper-encoder models"):
        refit(COMPACT_DIR, site_calls(8, 3), tmp_path / "a")
    v = site_calls(8, 3)
    with pytest.raises(ValueError, match="values per window"):
        refit(model_dir, SiteVerdicts(v.features[:, :10], v.upset, v.calls), tmp_path / "b")
    with pytest.raises(ValueError, match="disagree"):
        SiteVerdicts(v.features, v.upset[:-1], v.calls)
