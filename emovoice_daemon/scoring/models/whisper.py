"""Caller emotion from a frozen Whisper encoder on the daemon's short window.

Short window: the log-mel of the window only, Whisper's positional embeddings sliced to its frames (no 30 s
padding), and only the first ``encoder_layers`` blocks run (the rest are dropped at load). Per chosen hidden
state, the time mean and standard deviation are pooled, standardised (``feature_mean``/``feature_std``:
the training site's statistics, replaced in the daemon by the line's own, :mod:`emovoice_daemon.scoring.adaptation`)
and classified by a small head.

The exported directory holds only the head (a few MB). The encoder comes from ``config.encoder``: a local
Whisper checkpoint directory (the one ``emovoice-daemon fetch-encoder`` converts, or a hub snapshot of
``openai/whisper-base``), given as a path or as a name under ``$EMOVOICE_MODELS_DIR``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForAudioClassification, PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emovoice_daemon.scoring.models.compact import default_labels
from emovoice_daemon.scoring.models.whisper_import import ENCODER_NAME, models_dir

SAMPLING_RATE = 16000
N_FFT, HOP = 400, 160
MIN_TAIL = 1600  # a window's last, partial chunk is encoded when it holds at least 0.1 s (at 16 kHz)


class EncoderMissing(FileNotFoundError):
    """The Whisper checkpoint a model needs is not on this machine."""


class LogMel(nn.Module):
    """Whisper's log-mel front-end (as ``WhisperFeatureExtractor``), batched, on the window itself."""

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        fb = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                             max_frequency=SAMPLING_RATE / 2, sampling_rate=SAMPLING_RATE, norm="slaney", mel_scale="slaney")
        # Persistent (saved with the head): transformers materialises unsaved buffers uninitialised.
        self.register_buffer("filters", torch.from_numpy(fb).float().T.contiguous())
        self.register_buffer("window", torch.hann_window(N_FFT))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """float[B, T] at 16 kHz -> float[B, n_mels, T // 160]."""
        spec = torch.stft(wave.float(), N_FFT, HOP, window=self.window, return_complex=True)[..., :-1].abs() ** 2
        logmel = torch.clamp(self.filters @ spec, min=1e-10).log10()
        logmel = torch.maximum(logmel, logmel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (logmel + 4.0) / 4.0


def encoder_states(encoder: WhisperEncoder, mel: torch.Tensor, layers: int) -> list[torch.Tensor]:
    """Hidden states ``[input embedding, block 1, ..., block layers]`` (each float[B, frames / 2, d_model])
    of a ``WhisperEncoder`` on a short log-mel input; blocks past ``layers`` are not run."""
    x = nn.functional.gelu(encoder.conv1(mel.to(encoder.conv1.weight.dtype)))
    x = nn.functional.gelu(encoder.conv2(x)).transpose(1, 2)
    limit = encoder.embed_positions.weight.shape[0]
    if x.shape[1] > limit:
        raise ValueError(f"a window of {x.shape[1]} encoder frames exceeds Whisper's {limit} (30 s)")
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    states = [x]
    for block in encoder.layers[:layers]:
        x = block(x, attention_mask=None)
        states.append(x)
    return states


def pooled_states(states: list[torch.Tensor]) -> torch.Tensor:
    """Per hidden state, time mean and standard deviation: float[B, len(states), 2, d_model]."""
    h = torch.stack(states, dim=1).float()
    return torch.stack([h.mean(dim=2), h.std(dim=2, unbiased=False)], dim=2)


def state_sums(states: list[torch.Tensor]) -> torch.Tensor:
    """Per hidden state, the time sum and sum of squares, float64[B, len(states), 2, d_model]: chunks' sums add
    up, and with their frame counts pool exactly as their concatenation would (:func:`pool_sums`)."""
    h = torch.stack(states, dim=1).double()
    return torch.stack([h.sum(dim=2), h.square().sum(dim=2)], dim=2)


def pool_sums(sums: torch.Tensor, frames: torch.Tensor | float) -> torch.Tensor:
    """Time mean and standard deviation from summed :func:`state_sums` over ``frames`` frames: float[B, S, 2, d]."""
    n = torch.as_tensor(frames, dtype=torch.float64).reshape(-1, 1, 1)
    mean = sums[:, :, 0] / n
    var = (sums[:, :, 1] / n - mean.square()).clamp_min(0.0)
    return torch.stack([mean, var.sqrt()], dim=2).float()


def chunk_bounds(samples: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each chunk a window of ``samples`` is encoded in: whole chunks from its start, then the
    rest if it is at least ``MIN_TAIL`` (a window shorter than one chunk is one chunk)."""
    bounds = [(i, i + chunk) for i in range(0, samples - chunk + 1, chunk)]
    rest = bounds[-1][1] if bounds else 0
    if samples - rest >= (MIN_TAIL if bounds else 1):
        bounds.append((rest, samples))
    return bounds


def chunk_sums(encoder: WhisperEncoder, mel: LogMel, chunks: torch.Tensor, layers: int,
               keep: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Equal-length 16 kHz chunks, each encoded on its own: :func:`state_sums` of hidden states ``keep`` and the
    frames each chunk has."""
    states = encoder_states(encoder, mel(chunks), layers)
    return state_sums([states[i] for i in keep]), states[0].shape[1]


def window_features(encoder: WhisperEncoder, mel: LogMel, wave: torch.Tensor, layers: int, keep: Sequence[int],
                    chunk: int = 0) -> torch.Tensor:
    """Time mean and standard deviation of hidden states ``keep`` of 16 kHz windows, float[B, len(keep), 2, d]:
    the window encoded at once (``chunk`` 0), or chunk by chunk (:func:`chunk_bounds`) and pooled over its chunks."""
    if not chunk:
        states = encoder_states(encoder, mel(wave), layers)
        return pooled_states([states[i] for i in keep])
    bounds = chunk_bounds(wave.shape[1], chunk)
    whole = [b for b in bounds if b[1] - b[0] == chunk]
    total: torch.Tensor | float = 0.0
    frames = 0
    if whole:  # every whole chunk of every row in one batch
        sums, n = chunk_sums(encoder, mel, torch.cat([wave[:, a:b] for a, b in whole]), layers, keep)
        total, frames = sums.reshape(len(whole), len(wave), *sums.shape[1:]).sum(0), n * len(whole)
    for a, b in bounds[len(whole):]:
        sums, n = chunk_sums(encoder, mel, wave[:, a:b], layers, keep)
        total, frames = total + sums, frames + n
    return pool_sums(total, frames)


def resolve_encoder(name: str) -> Path:
    """An existing directory as given, else ``name`` under the models directory."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    candidate = models_dir() / name
    if candidate.is_dir():
        return candidate
    raise EncoderMissing(
        f"Whisper checkpoint {name!r} not found (looked in {path} and {candidate}); "
        "run `emovoice-daemon fetch-encoder` (./dev does it) or set EMOVOICE_MODELS_DIR"
    )


@strict(accept_kwargs=True)
class EmoVoiceWhisperConfig(PretrainedConfig):
    """Which encoder and which of its hidden states feed the head, and the head's shape."""

    model_type = "emovoice-whisper"

    encoder: str = ENCODER_NAME
    whisper: dict | None = None  # the encoder's WhisperConfig (so the head directory alone builds the model)
    encoder_layers: int = 3  # blocks run; the rest are dropped
    layers: list[int] | tuple[int, ...] = (2, 3)  # hidden-state indices pooled (0 = input embedding)
    head_hidden: int = 0  # 0: a linear head; otherwise one hidden ReLU layer of this width
    chunk_s: float = 0.0  # > 0: the window is encoded in chunks this long, each on its own, pooled over all
    sampling_rate: int = SAMPLING_RATE
    do_normalize: bool = False
    temperature: float = 1.0

    def __post_init__(self, **kwargs) -> None:
        default_labels(self)
        self.layers = [int(i) for i in self.layers]
        self.temperature = float(self.temperature)
        self.chunk_s = float(self.chunk_s)
        super().__post_init__(**kwargs)

    @property
    def feature_size(self) -> int:
        return len(self.layers) * 2 * int((self.whisper or {}).get("d_model", 512))


class EmoVoiceWhisperForAudioClassification(PreTrainedModel):
    """Frozen short-window Whisper encoder, pooled hidden states, standardisation, head."""

    config_class = EmoVoiceWhisperConfig
    main_input_name = "input_values"
    _keys_to_ignore_on_load_missing = [r"^encoder\."]

    def __init__(self, config: EmoVoiceWhisperConfig) -> None:
        super().__init__(config)
        whisper = WhisperConfig(**{**(config.whisper or {}), "encoder_layers": config.encoder_layers})
        self.mel = LogMel(whisper.num_mel_bins)
        self.encoder = WhisperEncoder(whisper)
        size = config.feature_size
        self.register_buffer("feature_mean", torch.zeros(size))
        self.register_buffer("feature_std", torch.ones(size))
        hidden = config.head_hidden
        self.head = (nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, config.num_labels))
                     if hidden else nn.Linear(size, config.num_labels))
        self.post_init()

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs):  # noqa: ANN001, ANN206 (transformers' signature)
        """The head from ``path``, the encoder's first ``encoder_layers`` blocks from ``config.encoder``."""
        model = super().from_pretrained(path, *args, **kwargs)
        model.load_encoder(resolve_encoder(model.config.encoder))
        return model

    def load_encoder(self, path: Path) -> None:
        """Copy the encoder weights (blocks beyond ``encoder_layers`` are skipped) from a Whisper checkpoint."""
        from transformers import WhisperModel

        source = WhisperModel.from_pretrained(str(path), dtype=torch.float32).encoder
        source.layers = source.layers[: self.config.encoder_layers]
        self.encoder.load_state_dict(source.state_dict())
        self.encoder.requires_grad_(False)

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """What the exported directory stores: everything but the encoder."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    @property
    def chunk(self) -> int:
        """Samples per encoded chunk (0: the whole window is encoded at once)."""
        return int(round(self.config.chunk_s * self.config.sampling_rate))

    def chunk_sums(self, chunks: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Equal-length 16 kHz chunks, each encoded on its own: :func:`state_sums` of the chosen hidden states and
        the frames each chunk has."""
        return chunk_sums(self.encoder, self.mel, chunks, self.config.encoder_layers, self.config.layers)

    def pooled_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised head input, float[B, feature_size], for 16 kHz windows (encoded whole, or chunk by chunk
        and pooled over the chunks)."""
        return window_features(self.encoder, self.mel, input_values, self.config.encoder_layers, self.config.layers,
                               self.chunk).flatten(1)

    def classify(self, normalised: torch.Tensor) -> torch.Tensor:
        """Logits from standardised features."""
        return self.head(normalised.to(self.feature_mean.dtype))

    def classify_trained(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from unnormalised features, standardised by the training statistics (no line adaptation)."""
        return self.classify((feats - self.feature_mean) / self.feature_std)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """Logits with the training site's standardisation (the daemon substitutes the line's own); padded rows
        of a batch (``attention_mask``) are scored on their own samples only."""
        if attention_mask is not None and not bool(attention_mask.all()):
            logits = torch.cat([self(input_values[i : i + 1, : int(n)]).logits for i, n in enumerate(attention_mask.sum(1))])
        else:
            feats = self.pooled_features(input_values)
            logits = self.classify_trained(feats)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(EmoVoiceWhisperConfig.model_type, EmoVoiceWhisperConfig)
AutoModelForAudioClassification.register(EmoVoiceWhisperConfig, EmoVoiceWhisperForAudioClassification)
