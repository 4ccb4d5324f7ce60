"""The shipped compact student (issue #25): the daemon's loader runs it with line adaptation and its own escalation."""
import json
from pathlib import Path

import numpy as np
from synthetic_audio import synth

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.scoring.models.loader import load_classifier, read_escalation

STUDENT_DIR = Path(__file__).resolve().parents[2] / "emovoice_daemon" / "scoring" / "models" / "student"


def test_contract_card_and_escalation() -> None:
    cfg = json.loads((STUDENT_DIR / "config.json").read_text())
    assert cfg["model_type"] == "emovoice-compact" and cfg["feature_norm"] is True and cfg["sampling_rate"] == 8000
    assert json.loads((STUDENT_DIR / "preprocessor_config.json").read_text())["do_normalize"] is False
    assert {"enter", "alert", "smoothing"} <= read_escalation(STUDENT_DIR).keys()
    card = (STUDENT_DIR / "README.md").read_text()
    for needle in ("CREMA-D", "ODbL", "teacher", "emovoice-train student", "calls --choose"):
        assert needle in card, needle
    assert sum(p.stat().st_size for p in STUDENT_DIR.iterdir()) < 8 * 1024 * 1024


def test_loads_with_line_adaptation_and_scores_windows() -> None:
    clf = load_classifier(ModelConfig(path=str(STUDENT_DIR), site_stats_path=""))
    assert clf.adapter is not None and clf.escalation == read_escalation(STUDENT_DIR)
    x = np.stack([synth(k, 3.0, 8000, i) for i, k in enumerate(("buzz", "tone"))])
    probs, feats = clf.predict_with_features(x, ["leg-1", "leg-2"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5) and feats.shape == (2, 512)


def test_ships_a_replay_set_for_site_refits() -> None:
    with np.load(STUDENT_DIR / "replay.npz") as z:
        hidden, labels, guard = z["hidden"], z["labels"], z["guard"]
    assert hidden.dtype == np.float16 and hidden.shape[1] == 256 and guard.any() and not guard.all()
    assert set(np.unique(labels[guard])) == set(np.unique(labels[~guard])) == {0, 1, 2}
