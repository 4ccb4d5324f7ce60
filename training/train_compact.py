"""Path 3: the compact log-mel CNN trained from scratch (the shipped default)."""
from __future__ import annotations

from functools import partial

from emovoice_daemon.scoring.models.compact import CompactConfig, CompactForAudioClassification
from training.loop import train_end_to_end


def build(options: dict) -> CompactForAudioClassification:
    """A freshly initialised compact model; ``options`` are :class:`CompactConfig` fields."""
    return CompactForAudioClassification(CompactConfig(**options))


train = partial(train_end_to_end, build)  # (options, data, settings, augment, seed, log) -> (model, history)
