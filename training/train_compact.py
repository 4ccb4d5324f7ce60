"""Path 3: the compact log-mel CNN trained from scratch (the shipped default)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emovoice_daemon.models.compact import CompactConfig, CompactForAudioClassification
from training.augment import TelephonyAugment
from training.loop import Log, TrainSettings, fit


def build(options: dict) -> CompactForAudioClassification:
    """A freshly initialised compact model; ``options`` are :class:`CompactConfig` fields."""
    return CompactForAudioClassification(CompactConfig(**options))


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
) -> tuple[CompactForAudioClassification, list[dict]]:
    """Build and train a compact model on CPU (or the GPU when there is one)."""
    torch.manual_seed(seed)
    model = build(options).to("cuda" if torch.cuda.is_available() else "cpu")
    history = fit(model, train_waves, train_labels, val_waves, val_labels, settings, augment, seed, log)
    return model.cpu(), history
