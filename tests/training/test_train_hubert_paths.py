"""Pretrained-backbone paths on a tiny random HuBERT saved as a local 'pretrained' checkpoint."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_audio import synth
from transformers import AutoConfig, AutoModelForAudioClassification, HubertConfig, HubertModel

import emovoice_daemon.scoring.models  # noqa: F401
from emovoice_daemon.scoring.models.loader import Classifier
from emovoice_daemon.scoring.resample import resample
from emovoice_daemon.scoring.streaming import LegCache, StreamingFrontEnd
from training import train_hubert, train_superb
from training.augment import TelephonyAugment
from training.export import save_model_dir
from training.loop import TrainData, TrainSettings, predict_logits

TINY_HUBERT = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2, classifier_proj_size=8, layerdrop=0.0,
)
SETTINGS = TrainSettings(epochs=2, batch_size=4, lr=1e-3, fp16=True, grad_accum=2)


@pytest.fixture
def pretrained(tmp_path: Path) -> str:
    torch.manual_seed(0)
    HubertModel(HubertConfig(**TINY_HUBERT)).save_pretrained(tmp_path / "tiny-hubert")
    return str(tmp_path / "tiny-hubert")


def data(n: int = 12) -> tuple[list[np.ndarray], np.ndarray]:
    kinds = ("buzz", "tone", "chirp")
    return [synth(kinds[i % 3], 0.6, 8000, i) for i in range(n)], np.arange(n) % 3


def test_finetune_from_local_checkpoint_exports_and_reloads(pretrained: str, tmp_path: Path) -> None:
    waves, labels = data()
    frozen_before = train_hubert.build({"pretrained": pretrained}).hubert.feature_extractor.state_dict()
    model, history = train_hubert.train({"pretrained": pretrained}, TrainData(waves, labels, waves[:6], labels[:6]), SETTINGS, TelephonyAugment(), 0, lambda _: None)
    assert len(history) == 2
    # Frozen CNN front-end is untouched, the transformer and head were trained.
    for k, v in model.hubert.feature_extractor.state_dict().items():
        torch.testing.assert_close(v, frozen_before[k])
    backbone = HubertModel.from_pretrained(pretrained)
    assert not torch.equal(model.hubert.encoder.layers[0].attention.q_proj.weight, backbone.encoder.layers[0].attention.q_proj.weight)

    save_model_dir(model, tmp_path / "export", 1.25, False, "# card\n")
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["model_type"] == "emovoice-hubert" and cfg["temperature"] == 1.25 and cfg["sampling_rate"] == 16000
    assert json.loads((tmp_path / "export" / "preprocessor_config.json").read_text())["sampling_rate"] == 16000
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path / "export")
    assert AutoConfig.from_pretrained(tmp_path / "export").temperature == 1.25
    np.testing.assert_allclose(predict_logits(loaded, waves[:3]), predict_logits(model, waves[:3]), atol=1e-5)


def test_streaming_front_end_keeps_pretrained_convs_and_streams_exactly(pretrained: str, speech_8k: np.ndarray) -> None:
    model = train_hubert.build({"pretrained": pretrained, "streaming_front_end": True})
    assert model.config.feat_extract_norm == "layer"
    backbone = HubertModel.from_pretrained(pretrained)
    for ours, theirs in zip(model.hubert.feature_extractor.conv_layers, backbone.feature_extractor.conv_layers):
        torch.testing.assert_close(ours.conv.weight, theirs.conv.weight)
    assert all(p.requires_grad for p in model.hubert.feature_extractor.parameters())  # new norms must learn
    clf = Classifier(name="s", trained=True, sampling_rate=16000, model=model.eval(), class_of_label=np.arange(3))
    front, cache = StreamingFrontEnd(clf), LegCache()
    audio = resample(speech_8k, 8000, 16000).astype(np.float32) / 32768.0
    for start in (0, 16000, 32000):
        window = audio[start : start + 48000]
        np.testing.assert_allclose(front.predict([(cache, window, start)]), clf.predict(window[None]), atol=1e-4)
    assert cache.recomputed == 0


def test_hubert_from_config_without_pretrained_weights() -> None:
    model = train_hubert.build({"config": TINY_HUBERT, "freeze_feature_encoder": False})
    assert model.config.id2label == {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
    assert all(p.requires_grad for p in model.hubert.feature_extractor.parameters())
    assert predict_logits(model, data(2)[0]).shape == (2, 3)


def test_superb_head_on_cached_features_matches_full_model(pretrained: str, tmp_path: Path) -> None:
    waves, labels = data()
    options = {"pretrained": pretrained, "augmented_copies": 1}
    model, history = train_superb.train(options, TrainData(waves, labels, waves[:6], labels[:6]), TrainSettings(epochs=3, batch_size=4, lr=0.05), TelephonyAugment(), 0, lambda _: None)
    assert len(history) == 3
    # Backbone frozen: identical to the checkpoint. Layer weights learned.
    backbone = HubertModel.from_pretrained(pretrained)
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(model.hubert.state_dict()[k], v)
    assert float((model.layer_weights.max() - model.layer_weights.min()).detach()) > 1e-4
    # Caching per-layer pooled features is exact: head(cache) == full forward on the waveform.
    with torch.no_grad():
        cached = train_superb.head_logits(model, torch.from_numpy(train_superb.layer_features(model, waves[:4]))).numpy()
    full = np.stack([predict_logits(model, [w])[0] for w in waves[:4]])
    np.testing.assert_allclose(cached, full, atol=1e-4)
    # Exported as a standard emovoice-hubert directory with the weighted layer sum switched on.
    save_model_dir(model, tmp_path / "superb", 1.0, False, "# card\n")
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path / "superb")
    assert loaded.config.use_weighted_layer_sum
    np.testing.assert_allclose(predict_logits(loaded, waves[:2]), full[:2], atol=1e-4)
