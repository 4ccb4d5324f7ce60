"""HuBERT-family classifiers with the EmoVoice export contract (``temperature``, ``sampling_rate`` in config.json).

Same weights and layout as ``HubertForSequenceClassification``; a separate ``model_type`` only because
transformers drops an undeclared ``temperature`` key when it loads a plain ``HubertConfig``. With
``use_weighted_layer_sum=True`` this is also the SUPERB-style frozen-backbone model (learned softmax
weights over all hidden layers, projector, mean pooling, classifier).
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForAudioClassification, HubertConfig, HubertForSequenceClassification

from emovoice_daemon.scoring.models.compact import default_labels


@strict(accept_kwargs=True)
class EmoVoiceHubertConfig(HubertConfig):
    """``HubertConfig`` plus input rate, input normalisation and calibration temperature."""

    model_type = "emovoice-hubert"

    sampling_rate: int = 16000
    do_normalize: bool = False
    temperature: float = 1.0

    def __post_init__(self, **kwargs) -> None:
        default_labels(self)
        self.temperature = float(self.temperature)
        super().__post_init__(**kwargs)


class EmoVoiceHubertForSequenceClassification(HubertForSequenceClassification):
    """``HubertForSequenceClassification`` bound to :class:`EmoVoiceHubertConfig`."""

    config_class = EmoVoiceHubertConfig


AutoConfig.register(EmoVoiceHubertConfig.model_type, EmoVoiceHubertConfig)
AutoModelForAudioClassification.register(EmoVoiceHubertConfig, EmoVoiceHubertForSequenceClassification)
