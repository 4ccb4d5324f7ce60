"""Compact log-mel CNN for 3-class caller emotion, runnable on any CPU.

The model takes raw waveform at ``config.sampling_rate`` (float in [-1, 1]), computes
log-mel features with ``torch.stft`` (no torchaudio), references them to the level of the
window's loud (speech) frames with a fixed dynamic range (so neither line gain nor the amount of
silence matters; spectral tilt is kept), and classifies with a small 2-D conv front-end, a 1-D temporal conv stack and mean+std pooling.
With ``feature_norm`` the pooled vector is standardised before the head (statistics learnt in training, like batch
norm), so the daemon can centre it on a site's own statistics as it does the encoder model's features.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForAudioClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


def default_labels(config: PretrainedConfig) -> None:
    """Give a config without labels EmoVoice's three (the shared default of every EmoVoice model type)."""
    if config.id2label is None:
        config.id2label = dict(enumerate(LABELS))
        config.label2id = {name: i for i, name in enumerate(LABELS)}


@strict(accept_kwargs=True)
class CompactConfig(PretrainedConfig):
    """Hyper-parameters of :class:`CompactForAudioClassification` (plus the calibration temperature)."""

    model_type = "emovoice-compact"

    sampling_rate: int = 8000
    n_fft: int = 256
    win_length: int = 256
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 4000.0
    conv2d_channels: list[int] | tuple[int, ...] = (8, 16)
    conv1d_channels: list[int] | tuple[int, ...] = (128, 128, 128)
    hidden_size: int = 128
    dropout: float = 0.3
    spec_time_masks: int = 2
    spec_time_mask_width: int = 10
    spec_freq_masks: int = 2
    spec_freq_mask_width: int = 8
    level_quantile: float = 0.9
    dynamic_range_db: float = 50.0
    feature_norm: bool = False
    temperature: float = 1.0

    def __post_init__(self, **kwargs) -> None:
        default_labels(self)
        self.conv2d_channels = list(self.conv2d_channels)
        self.conv1d_channels = list(self.conv1d_channels)
        self.temperature = float(self.temperature)
        super().__post_init__(**kwargs)


def mel_filterbank(n_fft: int, n_mels: int, sampling_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """HTK-style triangular mel filters, shape (n_mels, n_fft // 2 + 1)."""
    bins = np.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    mel_lo, mel_hi = (2595.0 * np.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    edges = 700.0 * (10.0 ** (np.linspace(mel_lo, mel_hi, n_mels + 2) / 2595.0) - 1.0)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None).astype(np.float32)


class LogMel(nn.Module):
    """Waveform (B, T) -> level-normalised log-mel (B, n_mels, frames)."""

    def __init__(self, config: CompactConfig) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = config.n_fft, config.win_length, config.hop_length
        self.level_quantile, self.dynamic_range = config.level_quantile, config.dynamic_range_db
        # Persistent (saved with the weights) so loading never has to rebuild them.
        n = np.arange(config.win_length)
        self.register_buffer("window", torch.from_numpy((0.5 - 0.5 * np.cos(2 * np.pi * n / config.win_length)).astype(np.float32)))
        self.register_buffer(
            "filters", torch.from_numpy(mel_filterbank(config.n_fft, config.n_mels, config.sampling_rate, config.f_min, config.f_max))
        )

    def forward(self, wave: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop_length, self.win_length, self.window, center=True, return_complex=True)
        mel = torch.log(torch.matmul(self.filters, spec.abs().pow(2)) + 1e-10)
        # Reference level: a high quantile of the frame energies (the speech, not the silence), so neither the
        # line gain nor the amount of silence in the window changes the features; then a fixed dynamic range.
        energy = mel.mean(dim=1)
        valid = torch.full_like(energy[:, 0], energy.shape[1]) if frame_mask is None else frame_mask.sum(1).to(energy.dtype)
        if frame_mask is not None:
            energy = energy.masked_fill(~frame_mask, float("-inf"))
        ranked = energy.sort(dim=1, descending=True).values
        k = ((1.0 - self.level_quantile) * valid).long().clamp(min=0)
        k = torch.minimum(k, valid.long().clamp(min=1) - 1)
        ref = ranked.gather(1, k[:, None])[:, :, None]
        floor = -self.dynamic_range * math.log(10.0) / 10.0
        return (torch.clamp(mel - ref, min=floor) - floor / 2) / 4.0


def conv2d_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU, then halve frequency and time."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


def conv1d_block(c_in: int, c_out: int, dilation: int) -> nn.Sequential:
    """Dilated temporal conv, batch norm, ReLU (length preserved)."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm1d(c_out), nn.ReLU())


class CompactForAudioClassification(PreTrainedModel):
    """Log-mel CNN + mean/std pooling + linear head; returns logits over ``config.id2label``."""

    config_class = CompactConfig
    main_input_name = "input_values"
    base_model_prefix = "compact"

    def __init__(self, config: CompactConfig) -> None:
        super().__init__(config)
        self.features = LogMel(config)
        chans = [1, *config.conv2d_channels]
        self.conv2d = nn.Sequential(*(conv2d_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.downsample = 2 ** len(config.conv2d_channels)
        flat = chans[-1] * (config.n_mels // self.downsample)
        c1 = [flat, *config.conv1d_channels]
        self.conv1d = nn.Sequential(*(conv1d_block(a, b, 2**i) for i, (a, b) in enumerate(zip(c1[:-1], c1[1:]))))
        self.norm = nn.BatchNorm1d(2 * c1[-1], affine=False) if config.feature_norm else None
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(2 * c1[-1], config.hidden_size),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.num_labels),
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _spec_augment(self, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        mel = mel.clone()
        n_mels, frames = mel.shape[1], mel.shape[2]
        for b in range(mel.shape[0]):
            for _ in range(cfg.spec_freq_masks):
                w = int(torch.randint(0, cfg.spec_freq_mask_width + 1, ()))
                f0 = int(torch.randint(0, max(1, n_mels - w), ()))
                mel[b, f0 : f0 + w] = 0.0
            for _ in range(cfg.spec_time_masks):
                w = int(torch.randint(0, cfg.spec_time_mask_width + 1, ()))
                t0 = int(torch.randint(0, max(1, frames - w), ()))
                mel[b, :, t0 : t0 + w] = 0.0
        return mel

    @property
    def feature_mean(self) -> torch.Tensor | None:
        """Training mean of the pooled features (``feature_norm`` models; None otherwise)."""
        return None if self.norm is None else self.norm.running_mean

    @property
    def feature_std(self) -> torch.Tensor | None:
        """Training spread of the pooled features (``feature_norm`` models; None otherwise)."""
        return None if self.norm is None else torch.sqrt(self.norm.running_var + self.norm.eps)

    def _pooled(self, input_values: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean and standard deviation over time of the conv stack's output (real frames only), float[B, 2C]."""
        mel = self.features(input_values, frame_mask)
        if self.training:
            mel = self._spec_augment(mel)
        x = self.conv2d(mel[:, None])
        x = self.conv1d(x.flatten(1, 2))
        if frame_mask is None:
            return torch.cat([x.mean(-1), x.std(-1, unbiased=False)], dim=-1)
        t = x.shape[-1]
        m = frame_mask[:, :: self.downsample][:, :t].to(x.dtype)[:, None, :]
        m = torch.nn.functional.pad(m, (0, t - m.shape[-1]))
        n = m.sum(-1).clamp(min=1.0)
        mean = (x * m).sum(-1) / n
        std = (((x - mean[..., None]) ** 2 * m).sum(-1) / n).clamp(min=1e-8).sqrt()
        return torch.cat([mean, std], dim=-1)

    def pooled_features(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised head input, float[B, 2C] (what a site's statistics are learnt on); ``attention_mask`` (B, T)
        marks real samples of unequal clips."""
        frame_mask = None
        if attention_mask is not None:
            lengths = attention_mask.sum(-1)
            frames = input_values.shape[-1] // self.config.hop_length + 1
            frame_mask = torch.arange(frames, device=input_values.device)[None] < (lengths[:, None] // self.config.hop_length + 1)
        return self._pooled(input_values, frame_mask)

    def classify(self, normalised: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features already standardised (by the training or a site's statistics)."""
        return self.head(normalised)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Classify a batch of waveforms (B, T); ``attention_mask`` (B, T) marks real samples."""
        pooled = self.pooled_features(input_values, attention_mask)
        logits = self.classify(pooled if self.norm is None else self.norm(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(CompactConfig.model_type, CompactConfig)
AutoModelForAudioClassification.register(CompactConfig, CompactForAudioClassification)

__all__ = ["CompactConfig", "CompactForAudioClassification", "LABELS", "mel_filterbank"]
