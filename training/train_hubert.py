"""Path 1: fine-tune a HuBERT-family model (e.g. DistilHuBERT) end to end on 16 kHz up-sampled telephone audio.

``options``: ``pretrained`` (local directory or hub id; omitted = random init from ``config``, for tests),
``config`` (HubertConfig overrides), ``freeze_feature_encoder`` (default true), ``sampling_rate`` (16000),
``do_normalize``, ``streaming_front_end`` (default false). Gradient accumulation and fp16 (on GPU) come from
``TrainSettings``.

``streaming_front_end: true`` swaps DistilHuBERT's first-layer GroupNorm (each channel normalised over the whole
input, so a window's frames depend on the window) for per-frame LayerNorm in every CNN layer
(``feat_extract_norm="layer"``, HuBERT-large's layout). The pretrained conv weights are kept, the new norms start
at identity and the CNN is trained with the rest (not frozen, unless asked); the daemon then computes each 20 ms
frame once per leg and the streaming pass equals the full-window pass by construction.
"""
from __future__ import annotations

from dataclasses import fields
from functools import partial

from transformers import AutoConfig

from emovoice_daemon.scoring.models.compact import LABELS
from emovoice_daemon.scoring.models.hubert import EmoVoiceHubertConfig, EmoVoiceHubertForSequenceClassification
from training.loop import train_end_to_end


def hubert_config(options: dict) -> EmoVoiceHubertConfig:
    """EmoVoice config from the pretrained checkpoint's config (if any), ``options["config"]`` and our labels."""
    names = {f.name for f in fields(EmoVoiceHubertConfig)}
    base = AutoConfig.from_pretrained(options["pretrained"]).to_dict() if options.get("pretrained") else {}
    merged = {k: v for k, v in base.items() if k in names} | dict(options.get("config") or {})
    merged |= {
        "id2label": dict(enumerate(LABELS)),
        "label2id": {name: i for i, name in enumerate(LABELS)},
        "sampling_rate": int(options.get("sampling_rate", 16000)),
        "do_normalize": bool(options.get("do_normalize", False)),
    }
    if options.get("streaming_front_end"):
        merged["feat_extract_norm"] = "layer"
    return EmoVoiceHubertConfig(**merged)


def build(options: dict) -> EmoVoiceHubertForSequenceClassification:
    """Pretrained backbone (or random, without ``pretrained``) with a fresh 3-class head."""
    config = hubert_config(options)
    if options.get("pretrained"):
        model = EmoVoiceHubertForSequenceClassification.from_pretrained(options["pretrained"], config=config)
    else:
        model = EmoVoiceHubertForSequenceClassification(config)
    if options.get("freeze_feature_encoder", not options.get("streaming_front_end", False)):
        model.freeze_feature_encoder()
    return model


train = partial(train_end_to_end, build)  # (options, data, settings, augment, seed, log) -> (model, history)
