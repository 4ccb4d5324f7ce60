"""The shipped Whisper-encoder head: export contract, size budget (head only), card, and it loads with its encoder."""
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.scoring.models.loader import ENCODER_DIR, load_classifier
from tests.conftest import fetched_encoder


def test_head_only_files_and_size_budget() -> None:
    names = {p.name for p in ENCODER_DIR.iterdir()}
    assert {"config.json", "preprocessor_config.json", "model.safetensors", "README.md"} <= names
    assert sum(p.stat().st_size for p in ENCODER_DIR.iterdir()) < 20 * 1024 * 1024
    assert not [k for k in load_file(ENCODER_DIR / "model.safetensors") if k.startswith("encoder.")]


def test_config_contract() -> None:
    cfg = json.loads((ENCODER_DIR / "config.json").read_text())
    assert cfg["model_type"] == "emovoice-whisper" and cfg["encoder"] == "whisper-base"
    assert cfg["id2label"] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    assert 0.05 < cfg["temperature"] < 20 and cfg["encoder_layers"] == max(cfg["layers"])
    pre = json.loads((ENCODER_DIR / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == cfg["sampling_rate"] == 16000


def test_model_card_states_data_licences_protocol_and_figures() -> None:
    card = (ENCODER_DIR / "README.md").read_text()
    for needle in ("CREMA-D", "ODbL", "Cao et al.", "Whisper", "MIT", "fold 1", "RAVDESS", "URDU", "EMOVO", "calm calls alerted",
                   "escalation.json", "emovoice-train head --out emovoice_daemon/scoring/models/encoder"):
        assert needle in card, needle


def test_loads_with_the_fetched_encoder_and_scores_windows(tmp_path: Path) -> None:
    fetched_encoder()
    clf = load_classifier(ModelConfig(path=str(ENCODER_DIR), site_stats_path=str(tmp_path / "site.npz")))
    x = (0.05 * np.random.default_rng(0).standard_normal((2, 48000))).astype(np.float32)
    p = clf.predict(x, ["a", "b"])
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1.0, atol=1e-5)


def test_ships_a_replay_set_of_this_head_for_site_refits() -> None:
    from emovoice_daemon.learning.refit import MAX_REPLAY_BYTES

    path = ENCODER_DIR / "replay.npz"
    assert path.stat().st_size <= MAX_REPLAY_BYTES
    with np.load(path) as z:
        stored, labels, guard = z["hidden"], z["labels"], z["guard"]
    hidden = stored.astype(np.float32)
    assert stored.dtype == np.float16 and hidden.shape[1] == json.loads((ENCODER_DIR / "config.json").read_text())["head_hidden"]
    assert guard.any() and set(labels[guard]) == set(labels[~guard]) == {0, 1, 2}
    last = load_file(ENCODER_DIR / "model.safetensors")
    pred = (hidden @ last["head.2.weight"].T + last["head.2.bias"]).argmax(1)
    uar = lambda part: np.mean([np.mean(pred[part & (labels == k)] == k) for k in range(3)])  # noqa: E731
    assert uar(~guard) > 0.95 and 0.7 < uar(guard) < uar(~guard)  # activations of this head: fitted / unseen actors
