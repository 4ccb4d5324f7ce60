"""Path 1: fine-tune a HuBERT-family model (e.g. DistilHuBERT) end to end on 16 kHz up-sampled telephone audio.

``options``: ``pretrained`` (local directory or hub id; omitted = random init from ``config``, for tests),
``config`` (HubertConfig overrides), ``freeze_feature_encoder`` (default true), ``sampling_rate`` (16000),
``do_normalize``. Gradient accumulation and fp16 (on GPU) come from ``TrainSettings``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch
from transformers import AutoConfig

from emovoice_daemon.models.compact import LABELS
from emovoice_daemon.models.hubert import EmoVoiceHubertConfig, EmoVoiceHubertForSequenceClassification
from training.augment import TelephonyAugment
from training.loop import Log, TrainSettings, fit


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
    return EmoVoiceHubertConfig(**merged)


def build(options: dict) -> EmoVoiceHubertForSequenceClassification:
    """Pretrained backbone (or random, without ``pretrained``) with a fresh 3-class head."""
    config = hubert_config(options)
    if options.get("pretrained"):
        model = EmoVoiceHubertForSequenceClassification.from_pretrained(options["pretrained"], config=config)
    else:
        model = EmoVoiceHubertForSequenceClassification(config)
    if options.get("freeze_feature_encoder", True):
        model.freeze_feature_encoder()
    return model


def train(
    options: dict,
    train_waves: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_waves: Sequence[np.ndarray],
    val_labels: np.ndarray,
    settings: TrainSettings,
    augment: TelephonyAugment,
    seed: int,
    log: Log = print,
) -> tuple[EmoVoiceHubertForSequenceClassification, list[dict]]:
    """Fine-tune on the GPU when there is one (fp16 there), else on the CPU."""
    torch.manual_seed(seed)
    model = build(options).to("cuda" if torch.cuda.is_available() else "cpu")
    history = fit(model, train_waves, train_labels, val_waves, val_labels, settings, augment, seed, log)
    return model.cpu(), history
