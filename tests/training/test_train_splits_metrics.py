from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.calibration import fit_temperature, softmax
from training.corpora import Utterance
from training.metrics import classification_report, confusion_matrix, expected_calibration_error, plot_confusion
from training.operating_point import recall_bias
from training.splits import (TooFewSpeakers, assign_speaker_folds, check_speakers, holdout_speakers, min_speakers,
                             speaker_folds)

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


def corpus(n_male: int = 12, n_female: int = 9, clips: int = 5) -> list[Utterance]:
    return [
        Utterance(Path(f"{s}_{c}.wav"), LABELS[c % 3], "x", f"spk{sex}{s}", "synthetic", sex)
        for sex, n in (("m", n_male), ("f", n_female))
        for s in range(n)
        for c in range(clips)
    ]


def test_folds_never_split_a_speaker_and_cover_everyone() -> None:
    utts = corpus()
    folds = speaker_folds(utts, 5, seed=3)
    seen = []
    for train, test in folds:
        assert not {utts[i].speaker for i in train} & {utts[i].speaker for i in test}
        assert len(train) + len(test) == len(utts)
        seen += list(test)
    assert sorted(seen) == list(range(len(utts)))


def test_folds_are_balanced_by_sex_and_size() -> None:
    utts = corpus()
    fold_of = assign_speaker_folds(utts, 5, seed=0)
    sizes = Counter(fold_of.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for sex in ("m", "f"):
        per = Counter(k for s, k in fold_of.items() if s.startswith(f"spk{sex}"))
        assert max(per.values()) - min(per.values()) <= 1


def test_folds_depend_on_seed_only() -> None:
    utts = corpus()
    assert assign_speaker_folds(utts, 4, 1) == assign_speaker_folds(utts, 4, 1)
    assert assign_speaker_folds(utts, 4, 1) != assign_speaker_folds(utts, 4, 2)
    with pytest.raises(ValueError):
        assign_speaker_folds(corpus(2, 1), 5, 0)


def test_holdout_is_speaker_disjoint() -> None:
    utts = corpus()
    train, held = holdout_speakers(utts, 0.2, seed=0)
    assert not {utts[i].speaker for i in train} & {utts[i].speaker for i in held}
    assert 3 <= len({utts[i].speaker for i in held}) <= 5


def test_report_uar_f1_and_confusion() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 1])
    probs = np.eye(3)[pred]
    r = classification_report(y, probs, LABELS)
    assert r["confusion"] == confusion_matrix(y, pred, 3).tolist() == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert r["uar"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert r["per_class"]["NEGATIVE"]["precision"] == pytest.approx(0.75)
    assert r["per_class"]["NEUTRAL"]["precision"] == pytest.approx(1 / 3)
    f1 = [0.75, 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 2 / 3]
    assert r["macro_f1"] == pytest.approx(np.mean(f1))
    assert r["accuracy"] == pytest.approx(5 / 8)


def test_ece() -> None:
    y = np.array([0, 1, 2, 0])
    assert expected_calibration_error(np.eye(3)[y], y) == pytest.approx(0.0)
    assert expected_calibration_error(np.eye(3)[[1, 2, 0, 1]], y) == pytest.approx(1.0)
    probs = np.tile([0.6, 0.2, 0.2], (10, 1))
    assert expected_calibration_error(probs, np.array([0] * 6 + [1] * 4)) == pytest.approx(0.0)


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3.0, y)  # a model 3x too confident
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(true_logits * 3.0), y)
    after = expected_calibration_error(softmax(true_logits * 3.0, t), y)
    assert after < before / 2


def test_recall_bias_reaches_target() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = np.eye(3)[y] + rng.normal(scale=1.0, size=(600, 3))
    shift = recall_bias(logits, y, 0, 0.95)
    z = logits.copy()
    z[:, 0] += shift
    assert shift > 0 and (z[y == 0].argmax(1) == 0).mean() >= 0.95
    z[:, 0] -= 0.05
    assert (z[y == 0].argmax(1) == 0).mean() < 0.95


def test_confusion_png(tmp_path: Path) -> None:
    plot_confusion(np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]]), LABELS, tmp_path / "cm.png", "test")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("folds, val_fraction, needed", [(4, 0.1, 14), (2, 0.5, 4), (5, 0.2, 7)])
def test_min_speakers_is_the_real_minimum(folds: int, val_fraction: float, needed: int) -> None:
    assert min_speakers(folds, val_fraction) == needed

    def split_all(n: int) -> None:
        utts = corpus(n_male=n - n // 2, n_female=n // 2, clips=3)
        check_speakers(utts, folds, val_fraction)
        for k, (train, _) in enumerate(speaker_folds(utts, folds, seed=0)):
            holdout_speakers([utts[i] for i in train], val_fraction, seed=k)

    split_all(needed)
    with pytest.raises(TooFewSpeakers, match=f"{needed - 1} speakers .* {needed} speakers are needed"):
        split_all(needed - 1)
