"""Compact model behaviour, export contract, and a tiny end-to-end train -> export -> load -> score round trip."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_audio import make_cremad, synth
from transformers import AutoConfig, AutoModelForAudioClassification

import emovoice_daemon.scoring.models  # noqa: F401
from emovoice_daemon.scoring.models.compact import CompactConfig, CompactForAudioClassification, mel_filterbank
from training.config import load_config
from training.loop import predict_logits
from training.run import run

TINY = {"n_mels": 32, "conv2d_channels": [4, 8], "conv1d_channels": [16, 16], "hidden_size": 16, "dropout": 0.0}


def tiny_model() -> CompactForAudioClassification:
    torch.manual_seed(0)
    return CompactForAudioClassification(CompactConfig(**TINY)).eval()


def test_mel_filterbank_shape_and_coverage() -> None:
    fb = mel_filterbank(256, 64, 8000, 50.0, 4000.0)
    assert fb.shape == (64, 129)
    assert fb.min() >= 0 and fb.max() <= 1.0
    assert (fb.sum(axis=0)[3:-2] > 0).all()  # every bin between f_min and f_max belongs to some filter


def test_forward_shapes_and_labels() -> None:
    model = tiny_model()
    out = model(torch.randn(3, 24000) * 0.1)
    assert out.logits.shape == (3, 3)
    assert [model.config.id2label[i] for i in range(3)] == ["NEGATIVE", "NEUTRAL", "POSITIVE"]


def test_line_gain_does_not_change_the_decision() -> None:
    model = tiny_model()
    x = torch.from_numpy(synth("buzz", 3.0, 8000, 0))[None]
    with torch.no_grad():
        a, b = model(x).logits, model(x * 0.1).logits
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_batched_scoring_equals_one_by_one() -> None:
    model = tiny_model()
    x = torch.stack([torch.from_numpy(synth(k, 3.0, 8000, i)) for i, k in enumerate(("buzz", "tone", "chirp"))])
    with torch.no_grad():
        batched = model(x).logits
        single = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_save_load_roundtrip_through_auto_classes(tmp_path: Path) -> None:
    from training.export import save_model_dir

    model = tiny_model()
    save_model_dir(model, tmp_path / "m", 1.7, False, "# card\n")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "emovoice-compact" and cfg["temperature"] == pytest.approx(1.7)
    assert cfg["id2label"] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    pre = json.loads((tmp_path / "m" / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == 8000 and pre["do_normalize"] is False
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path / "m").eval()
    assert AutoConfig.from_pretrained(tmp_path / "m").temperature == pytest.approx(1.7)
    x = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, loaded(x).logits)


def test_export_refuses_other_label_sets(tmp_path: Path) -> None:
    from training.export import save_model_dir

    model = CompactForAudioClassification(CompactConfig(**TINY, id2label={0: "ANGRY", 1: "CALM", 2: "HAPPY"}))
    with pytest.raises(ValueError, match="exactly"):
        save_model_dir(model, tmp_path / "m", 1.0, False, "")


def write_config(tmp_path: Path, data: Path, **extra: object) -> Path:
    import yaml

    cfg = {
        "model_kind": "compact",
        "model": TINY,
        "train_corpora": [{"kind": "cremad", "path": str(data)}],
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01},
        "evaluation": {"folds": 3, "max_folds": 1, "val_fraction": 0.34, "negative_recall_target": 0.5},
        "ship": "fold0",
        "num_threads": 1,
        "cache_dir": None,
        "output_dir": str(tmp_path / "run"),
        "export_dir": str(tmp_path / "export"),
        "card": {"data": "synthetic CREMA-D-named tones", "licence": "test licence"},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_end_to_end_train_export_load_score(tmp_path: Path) -> None:
    data = make_cremad(tmp_path / "cremad", actors=6, seconds=0.8)
    cfg = load_config(write_config(tmp_path, data))
    summary = run(cfg, log=lambda _: None)

    out = tmp_path / "run"
    assert {"metrics.md", "metrics.json", "confusion_cremad_telephony_pooled_folds.png"} <= {p.name for p in out.iterdir()}
    fold = json.loads((out / "folds" / "fold0.json").read_text())
    assert not set(fold["test_speakers"]) & set(fold["val_speakers"])
    assert set(summary["cremad"]) == {"clean", "telephony"}
    table = (out / "metrics.md").read_text()
    assert "telephony-degraded" in table and "clean 8 kHz" in table
    per_fold = [line for line in table.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(per_fold) == len(list((out / "folds").glob("fold*.json")))  # one row per fold run
    assert f"| {fold['temperature']:.2f} |" in per_fold[0]

    export = tmp_path / "export"
    assert {p.name for p in export.iterdir()} >= {"config.json", "preprocessor_config.json", "model.safetensors", "README.md"}
    card = (export / "README.md").read_text()
    for needle in ("code revision", "date", "synthetic CREMA-D-named tones", "test licence", "Evaluation protocol", "UAR"):
        assert needle in card
    model = AutoModelForAudioClassification.from_pretrained(export).eval()
    temperature = AutoConfig.from_pretrained(export).temperature
    assert temperature == pytest.approx(fold["temperature"])
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(synth("buzz", 3.0, 8000, 5))[None]).logits / temperature, -1)
    assert probs.shape == (1, 3) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    # The exported weights are the evaluated fold-1 model's.
    fold_model = AutoModelForAudioClassification.from_pretrained(out / "folds" / "fold0_model")
    waves = [synth(k, 1.0, 8000, i) for i, k in enumerate(("buzz", "tone", "chirp"))]
    np.testing.assert_allclose(predict_logits(model, waves), predict_logits(fold_model, waves), atol=1e-5)


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(write_config(tmp_path, tmp_path, epochz=3))
