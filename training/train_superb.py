"""Path 2 (SUPERB protocol): frozen backbone, learned softmax-weighted sum of all hidden layers, projector,
mean pooling, linear classifier. Trains on a CPU from cached features.

The head is affine, so mean pooling over time commutes with it: caching each clip's per-layer
time-averaged hidden states ``[layers + 1, hidden]`` is exact. The exported model is a plain
``emovoice-hubert`` (``HubertForSequenceClassification`` layout with ``use_weighted_layer_sum=True``).
``options`` as in :mod:`training.train_hubert`, plus ``augmented_copies`` (telephony-degraded copies of each
training clip to cache besides the clean one; default 2).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from emovoice_daemon.scoring.models.hubert import EmoVoiceHubertForSequenceClassification
from emovoice_daemon.scoring.resample import resample
from training import train_hubert
from training.augment import TELEPHONE_RATE, TelephonyAugment
from training.loop import Log, TrainData, TrainSettings, class_weights, model_rate
from training.metrics import classification_report


def build(options: dict) -> EmoVoiceHubertForSequenceClassification:
    """Backbone with a weighted-layer-sum head; everything but the head is frozen."""
    model = train_hubert.build({**options, "config": {**(options.get("config") or {}), "use_weighted_layer_sum": True}})
    model.freeze_base_model()
    return model


@torch.inference_mode()
def layer_features(model: EmoVoiceHubertForSequenceClassification, waves: Sequence[np.ndarray]) -> np.ndarray:
    """Per clip, the time average of every hidden state: ``[clips, layers + 1, hidden]`` (8 kHz input)."""
    model.eval()
    out = []
    for w in waves:
        x = resample(w, TELEPHONE_RATE, model_rate(model))
        if model.config.do_normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        hidden = model.hubert(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states
        out.append(torch.stack([h[0].mean(0) for h in hidden]).numpy())
    return np.stack(out)


def head_logits(model: EmoVoiceHubertForSequenceClassification, feats: torch.Tensor) -> torch.Tensor:
    """The model's own head applied to cached per-layer pooled features."""
    weights = torch.softmax(model.layer_weights, dim=-1)
    return model.classifier(model.projector((feats * weights[None, :, None]).sum(1)))


def train(options: dict, data: TrainData, settings: TrainSettings, augment: TelephonyAugment, seed: int,
          log: Log = print) -> tuple[EmoVoiceHubertForSequenceClassification, list[dict]]:
    """Cache features (clean + augmented copies), then fit layer weights and head; best epoch by validation UAR."""
    train_waves, train_labels, val_waves, val_labels = data.train_waves, data.train_labels, data.val_waves, data.val_labels
    torch.manual_seed(seed)
    model = build(options)
    copies = int(options.get("augmented_copies", 2))
    feats = [layer_features(model, train_waves)]
    for c in range(copies):
        degraded = [augment(w, TELEPHONE_RATE, np.random.default_rng([seed, c, i])) for i, w in enumerate(train_waves)]
        feats.append(layer_features(model, degraded))
    x = torch.from_numpy(np.concatenate(feats))
    y = torch.from_numpy(np.tile(train_labels, copies + 1))
    x_val = torch.from_numpy(layer_features(model, val_waves))
    log(f"cached features {tuple(x.shape)}")
    head = [model.layer_weights, *model.projector.parameters(), *model.classifier.parameters()]
    opt = torch.optim.AdamW(head, lr=settings.lr, weight_decay=settings.weight_decay)
    weight = class_weights(train_labels, model.config.num_labels, settings.class_weight_power)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    gen = torch.Generator().manual_seed(seed)
    best_uar, best_state, history = -1.0, None, []
    for epoch in range(settings.epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(settings.batch_size):
            loss = torch.nn.functional.cross_entropy(head_logits(model, x[idx]), y[idx], weight=weight, label_smoothing=settings.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            val = classification_report(val_labels, head_logits(model, x_val).numpy(), names)
        history.append({"epoch": epoch + 1, "train_loss": total / len(x), "val_uar": val["uar"], "val_macro_f1": val["macro_f1"]})
        log(f"epoch {epoch + 1}/{settings.epochs} loss {total / len(x):.4f} val UAR {val['uar']:.4f}")
        if val["uar"] >= best_uar:
            best_uar, best_state = val["uar"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, history
