"""load_classifier: HF directories, label mapping, temperature, validation errors, placeholder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.scoring.models import loader
from emovoice_daemon.scoring.models.compact import CompactConfig, CompactForAudioClassification
from emovoice_daemon.scoring.models.loader import ModelError, load_classifier
from emovoice_daemon.scoring.streaming import supports

from .conftest import save_model_dir


def speechlike(n: int = 2, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) for i in range(n)]).astype(np.float32)


def logits_of(clf: loader.Classifier, x: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return clf.model(input_values=torch.from_numpy(x)).logits


def test_labels_are_mapped_and_summed_with_temperature(tmp_path: Path) -> None:
    path = save_model_dir(tmp_path / "m", ["angry", "neutral", "happy", "sad"], temperature=2.0, do_normalize=False)
    clf = load_classifier(ModelConfig(path=str(path)))
    assert (clf.trained, clf.sampling_rate, clf.labels) == (True, 16000, ("NEGATIVE", "NEUTRAL", "POSITIVE"))
    assert list(clf.class_of_label) == [0, 1, 2, 0]
    with torch.no_grad():
        clf.model.classifier.weight.mul_(300.0)  # logits large enough for the temperature to matter
    x = speechlike()
    logits = logits_of(clf, x)
    p, p_t1 = torch.softmax(logits / 2.0, dim=-1).numpy(), torch.softmax(logits, dim=-1).numpy()
    assert np.abs(p - p_t1).max() > 0.05
    expected = np.stack([p[:, 0] + p[:, 3], p[:, 1], p[:, 2]], axis=1)
    np.testing.assert_allclose(clf.predict(x), expected, atol=1e-5)


def test_do_normalize_standardises_each_window(tmp_path: Path) -> None:
    clf = load_classifier(ModelConfig(path=str(save_model_dir(tmp_path / "m", ["angry", "neutral", "happy"]))))
    assert clf.normalize_input
    x = speechlike()
    np.testing.assert_allclose(clf.predict(x), clf.predict(x * 5 + 0.1), atol=1e-5)  # level and offset removed


def test_label_map_overrides_and_completes_the_builtin_names(tmp_path: Path) -> None:
    path = save_model_dir(tmp_path / "m", ["irate", "Neutral", "content"])
    clf = load_classifier(ModelConfig(path=str(path), label_map={"irate": "NEGATIVE", "content": "POSITIVE"}))
    assert list(clf.class_of_label) == [0, 1, 2]


@pytest.mark.parametrize("labels, label_map, message", [
    (["angry", "surprised"], {}, r"cannot map model labels \['surprised'\].*label_map"),
    (["neutral", "happy"], {}, "no model label maps to NEGATIVE"),
    (["angry", "neutral"], {"angry": "FURIOUS"}, r"targets \['FURIOUS'\]"),
])
def test_unmappable_labels_are_reported(tmp_path: Path, labels: list[str], label_map: dict, message: str) -> None:
    path = save_model_dir(tmp_path / "m", labels)
    with pytest.raises(ModelError, match=message):
        load_classifier(ModelConfig(path=str(path), label_map=label_map))


def _break(path: Path, what: str) -> None:
    if what == "no dir":
        import shutil
        shutil.rmtree(path)
    elif what in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (path / what).unlink()
    elif what == "rate 4000":
        prep = json.loads((path / "preprocessor_config.json").read_text())
        (path / "preprocessor_config.json").write_text(json.dumps({**prep, "sampling_rate": 4000}))
    elif what == "rate mismatch":
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, "sampling_rate": 8000}))
    elif what == "bad json":
        (path / "config.json").write_text("{not json")
    elif what == "temperature 0":
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, "temperature": 0}))


@pytest.mark.parametrize("what, message", [
    ("no dir", "model directory does not exist"),
    ("config.json", r"config.json: missing"),
    ("preprocessor_config.json", r"preprocessor_config.json: missing"),
    ("model.safetensors", "no weights file"),
    ("rate 4000", "sampling_rate must be an integer 8000-48000 Hz, got 4000"),
    ("rate mismatch", "config.json sampling_rate 8000 differs from preprocessor_config.json sampling_rate 16000"),
    ("bad json", "not readable JSON"),
    ("temperature 0", "temperature must be a number > 0"),
])
def test_broken_directories_get_clear_errors(tmp_path: Path, what: str, message: str) -> None:
    path = save_model_dir(tmp_path / "m", ["angry", "neutral", "happy"])
    _break(path, what)
    with pytest.raises(ModelError, match=message):
        load_classifier(ModelConfig(path=str(path)))


def test_placeholder_when_no_model_and_no_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "DEFAULT_DIR", tmp_path / "absent")
    a, b = load_classifier(ModelConfig()), load_classifier(ModelConfig())
    assert (a.name, a.trained, a.sampling_rate) == ("untrained-placeholder", False, 16000)
    np.testing.assert_array_equal(a.predict(speechlike()), b.predict(speechlike()))  # fixed seed
    assert supports(a)


def test_shipped_default_is_loaded_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "default"
    model = CompactForAudioClassification(CompactConfig())
    model.save_pretrained(default)
    Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(default)
    monkeypatch.setattr(loader, "DEFAULT_DIR", default)
    clf = load_classifier(ModelConfig())
    assert clf.trained and clf.sampling_rate == 8000
    probs = clf.predict(speechlike(rate=8000))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert not supports(clf)  # log-mel CNN: the engine uses the plain full-window path


def test_int8_quantisation_keeps_probabilities_close(tmp_path: Path) -> None:
    path = save_model_dir(tmp_path / "m", ["angry", "neutral", "happy"])
    fp32 = load_classifier(ModelConfig(path=str(path)))
    int8 = load_classifier(ModelConfig(path=str(path), quantize_int8=True))
    assert any("quantized" in type(m).__module__ for m in int8.model.modules())
    x = speechlike(4)
    assert np.abs(int8.predict(x) - fp32.predict(x)).max() < 0.02


def test_a_model_directory_chooses_int8_unless_the_config_says_otherwise(tmp_path: Path,
                                                                        recwarn: pytest.WarningsRecorder) -> None:
    path = save_model_dir(tmp_path / "m", ["angry", "neutral", "happy"])
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "quantize_int8": True}))
    quantized = lambda clf: any("quantized" in type(m).__module__ for m in clf.model.modules())  # noqa: E731
    assert quantized(load_classifier(ModelConfig(path=str(path))))  # model.quantize_int8: model (the default)
    assert not [w for w in recwarn if "quantize_per_tensor" in str(w.message)]  # torch's deprecation notice is not logged
    assert not quantized(load_classifier(ModelConfig(path=str(path), quantize_int8=False)))
    (path / "config.json").write_text(json.dumps({**config, "quantize_int8": "yes"}))
    with pytest.raises(ModelError, match="quantize_int8 must be true or false"):
        load_classifier(ModelConfig(path=str(path)))


def test_cuda_requested_without_a_gpu_is_an_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    path = save_model_dir(tmp_path / "m", ["angry", "neutral", "happy"])
    with pytest.raises(ModelError, match="no CUDA device"):
        load_classifier(ModelConfig(path=str(path), device="cuda"))


def test_predict_rejects_a_wrong_shape(tmp_path: Path) -> None:
    clf = load_classifier(ModelConfig(path=str(save_model_dir(tmp_path / "m", ["angry", "neutral", "happy"]))))
    with pytest.raises(ValueError, match=r"float32\[B, T\]"):
        clf.predict(np.zeros(16000, dtype=np.float32))


def test_default_falls_back_to_the_compact_model_when_it_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    broken = save_model_dir(tmp_path / "encoder", ["angry", "neutral", "happy"])
    (broken / "model.safetensors").unlink()
    compact = tmp_path / "compact"
    CompactForAudioClassification(CompactConfig()).save_pretrained(compact)
    Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(compact)
    monkeypatch.setattr(loader, "DEFAULT_DIR", broken)
    monkeypatch.setattr(loader, "COMPACT_DIR", compact)
    clf = load_classifier(ModelConfig())
    assert clf.sampling_rate == 8000 and "scoring with the compact model" in caplog.text
    with pytest.raises(ModelError):  # an explicit model.path never falls back
        load_classifier(ModelConfig(path=str(broken)))


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 16)])
def test_auto_threads_leave_most_cores_to_ingest(cores: int, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.threads 0 (the default): one inference thread per 4 usable cores; on a small box, 1 (issue 17:
    2 threads cost 11.3 CPU-ms per window against 4.1 with 1, and starved ingest on a loaded 2-core machine)."""
    assert ModelConfig().threads == 0
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert loader.inference_threads(ModelConfig()) == expected
    assert loader.inference_threads(ModelConfig(threads=3)) == 3


def test_the_loaded_model_uses_the_chosen_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0, 1})
    before = torch.get_num_threads()
    try:
        load_classifier(ModelConfig(device="cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_compact_model_with_feature_norm_adapts_to_the_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = CompactForAudioClassification(CompactConfig(conv2d_channels=[4, 4], conv1d_channels=[8, 8], hidden_size=8))
    normed = CompactForAudioClassification(CompactConfig(conv2d_channels=[4, 4], conv1d_channels=[8, 8], hidden_size=8,
                                                         feature_norm=True))
    normed.train()
    x = speechlike(4, 3.0, 8000)
    normed(input_values=torch.from_numpy(x))  # training batches move the feature statistics off 0 / 1
    for name, model in (("plain", plain), ("normed", normed)):
        model.eval().save_pretrained(tmp_path / name)
        Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=False).save_pretrained(tmp_path / name)
    assert load_classifier(ModelConfig(path=str(tmp_path / "plain"), site_stats_path="")).adapter is None
    clf = load_classifier(ModelConfig(path=str(tmp_path / "normed"), site_stats_path=""))
    assert clf.adapter is not None and clf.adapter.site.mean.shape == (16,)
    assert not np.allclose(clf.model.feature_mean.numpy(), 0.0)
    expected = torch.softmax(logits_of(clf, x), dim=-1).numpy()
    probs, feats = clf.predict_with_features(x)  # no legs: the training statistics, as the model's own forward
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert feats.shape == (4, 16)
    assert not np.allclose(clf.predict(x, ["a", "b", "c", "d"])[1:], expected[1:], atol=1e-4)  # the site's statistics
