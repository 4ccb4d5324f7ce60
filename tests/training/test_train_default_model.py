"""The default model shipped in the daemon package honours the export contract and the size budget."""
import json
from pathlib import Path

import numpy as np
import torch
from synthetic_audio import synth
from transformers import AutoConfig, AutoModelForAudioClassification

import emovoice_daemon.scoring.models  # noqa: F401

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "emovoice_daemon" / "scoring" / "models" / "default"


def test_files_and_size_budget() -> None:
    names = {p.name for p in DEFAULT_DIR.iterdir()}
    assert {"config.json", "preprocessor_config.json", "model.safetensors", "README.md"} <= names
    assert sum(p.stat().st_size for p in DEFAULT_DIR.iterdir()) < 20 * 1024 * 1024


def test_config_contract() -> None:
    cfg = json.loads((DEFAULT_DIR / "config.json").read_text())
    assert cfg["id2label"] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    assert cfg["label2id"] == {"NEGATIVE": 0, "NEUTRAL": 1, "POSITIVE": 2}
    assert isinstance(cfg["temperature"], float) and 0.05 < cfg["temperature"] < 20
    pre = json.loads((DEFAULT_DIR / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == cfg["sampling_rate"] == 8000
    assert pre["do_normalize"] is False


def test_model_card_states_data_licence_split_metrics_revision() -> None:
    card = (DEFAULT_DIR / "README.md").read_text()
    for needle in ("CREMA-D", "ODbL", "Cao et al.", "group k-fold over speakers", "UAR", "telephony-degraded", "code revision", "date", "emovoice-train run"):
        assert needle in card, needle


def test_loads_generically_and_scores_a_window() -> None:
    config = AutoConfig.from_pretrained(DEFAULT_DIR)
    model = AutoModelForAudioClassification.from_pretrained(DEFAULT_DIR).eval()
    x = torch.from_numpy(np.stack([synth(k, 3.0, 8000, i) for i, k in enumerate(("buzz", "tone"))]))
    with torch.no_grad():
        probs = torch.softmax(model(input_values=x).logits / config.temperature, dim=-1)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
