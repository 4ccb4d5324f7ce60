"""Streaming CNN front-end for HuBERT / wav2vec2-shaped classifiers.

Their convolutional feature encoder is local (HuBERT-base: 25 ms receptive field, 20 ms
stride), so each leg caches its encoder frames and each hop computes only the frames of
the new audio; the transformer still sees the whole window. The one non-local piece is
the first layer's GroupNorm (one group per channel: each channel normalised over the
whole input). Here it uses the statistics of the *window being scored*, accumulated per
computed chunk: a leg's first window is computed whole and is exact; later windows reuse
frames normalised with the statistics of the window they were first computed for.
Encoders with per-frame LayerNorm (``feat_extract_norm="layer"``) stream exactly.
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .models.loader import Classifier


def _base_model(model: nn.Module) -> nn.Module | None:
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    encoder = getattr(base, "feature_extractor", None)
    return base if isinstance(getattr(encoder, "conv_layers", None), nn.ModuleList) else None


def _group_norm(layer: nn.Module) -> nn.GroupNorm | None:
    norm = getattr(layer, "layer_norm", None)
    return norm if isinstance(norm, nn.GroupNorm) else None


def supports(classifier: Classifier) -> bool:
    """True when the classifier has a cacheable conv feature encoder."""
    base = _base_model(classifier.model)
    if base is None:
        return False
    first = base.feature_extractor.conv_layers[0]
    norm = _group_norm(first)
    if norm is not None:  # per-channel GroupNorm also cancels per-window input normalisation
        return norm.num_groups == norm.num_channels
    return not classifier.normalize_input


def encoder_geometry(conv_layers: nn.ModuleList) -> tuple[int, int]:
    """(receptive field, stride) in input samples of a stack of 1-D convolutions."""
    field_, stride = 1, 1
    for layer in conv_layers:
        k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
        field_ += (k - 1) * stride
        stride *= s
    return field_, stride


@dataclass
class _Chunk:
    """First-layer statistics of one computed chunk of frames [start, end)."""

    start: int
    end: int
    count: int
    total: torch.Tensor  # per-channel sum (float64)
    squares: torch.Tensor  # per-channel sum of squares (float64)


@dataclass
class LegCache:
    """One leg's encoder frames (channels, n) starting at global frame ``first``."""

    frames: torch.Tensor | None = None
    first: int = 0
    chunks: deque[_Chunk] = field(default_factory=deque)

    @property
    def next_frame(self) -> int:
        return self.first + (0 if self.frames is None else self.frames.shape[1])

    def nbytes(self) -> int:
        return 0 if self.frames is None else self.frames.element_size() * self.frames.nelement()


@dataclass
class _Work:
    cache: LegCache
    f_start: int  # first frame of the window
    f_end: int  # one past its last frame
    f_new: int  # first frame to compute
    chunk: np.ndarray  # the samples those frames need


class _Fixed(nn.Module):
    """Stands in for the feature encoder and returns precomputed frames."""

    def __init__(self, frames: torch.Tensor) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.frames


class StreamingFrontEnd:
    """Scores windows of many legs, computing only each leg's new encoder frames."""

    def __init__(self, classifier: Classifier) -> None:
        base = _base_model(classifier.model)
        if base is None or not supports(classifier):
            raise ValueError(f"model {classifier.name} has no cacheable conv feature encoder")
        self.classifier, self.base = classifier, base
        self.layers = base.feature_extractor.conv_layers
        self.norm = _group_norm(self.layers[0])
        self.field, self.stride = encoder_geometry(self.layers)

    def frame_span(self, start: int, end: int) -> tuple[int, int]:
        """Global frames lying wholly inside samples [start, end)."""
        return -(-start // self.stride), (end - self.field) // self.stride + 1

    def predict(self, jobs: list[tuple[LegCache, np.ndarray, int]]) -> np.ndarray:
        """Probabilities for windows given as (leg cache, audio, global index of audio[0])."""
        with torch.inference_mode(), self.classifier.autocast():
            windows = self._window_frames(jobs)
            probs = np.zeros((len(jobs), 3), dtype=np.float32)
            for idx in _group_indices(windows, lambda f: f.shape[1]):
                frames = torch.stack([windows[i] for i in idx])
                with self._features(frames):
                    dummy = torch.zeros(len(idx), 1, device=frames.device)
                    probs[idx] = self.classifier.probs_from_logits(self.classifier.model(input_values=dummy).logits)
        return probs

    def _window_frames(self, jobs: list[tuple[LegCache, np.ndarray, int]]) -> list[torch.Tensor]:
        """Encoder frames of each window; a leg's windows are encoded in order, one per round."""
        frames: list[torch.Tensor] = [torch.empty(0)] * len(jobs)
        rounds: list[list[int]] = []
        seen: dict[int, int] = {}
        for i, (cache, _, _) in enumerate(jobs):
            k = seen[id(cache)] = seen.get(id(cache), -1) + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(i)
        for idx in rounds:
            work = [self._plan(*jobs[i]) for i in idx]
            for group in _groups(work, lambda w: len(w.chunk)):
                self._encode(group)
            for i, w in zip(idx, work):
                frames[i] = w.cache.frames[:, w.f_start - w.cache.first : w.f_end - w.cache.first]
        return frames

    def _plan(self, cache: LegCache, audio: np.ndarray, start: int) -> _Work:
        f_start, f_end = self.frame_span(start, start + len(audio))
        if f_end <= f_start:
            raise ValueError(f"window of {len(audio)} samples is shorter than the encoder's receptive field")
        if not f_start <= cache.next_frame <= f_end:  # gap or rewind: recompute the window whole
            cache.frames, cache.first = None, f_start
            cache.chunks.clear()
        f_new = cache.next_frame
        lo = f_new * self.stride - start  # to the window's end, as a full-window pass sees it
        return _Work(cache, f_start, f_end, f_new, audio[lo:] if f_end > f_new else audio[:0])

    def _encode(self, group: list[_Work]) -> None:
        """Compute and cache the new frames of equal-length chunks in one batch."""
        if len(group[0].chunk) == 0:
            return
        x = self.classifier.to_device(np.stack([w.chunk for w in group]))[:, None, :]
        layers = self.layers
        h = x
        if self.norm is not None:
            h = layers[0].activation(self._normalise(layers[0].conv(x).float(), group))
            layers = layers[1:]
        for layer in layers:
            h = layer(h)
        for w, frames in zip(group, h.float()):
            frames = frames[:, : w.f_end - w.f_new]
            c = w.cache
            c.frames = frames if c.frames is None else torch.cat([c.frames, frames], dim=1)
            keep = c.frames.shape[1] - (w.f_end - w.f_start)
            if keep > 0:  # drop frames older than this window
                c.frames, c.first = c.frames[:, keep:], c.first + keep

    def _normalise(self, h: torch.Tensor, group: list[_Work]) -> torch.Tensor:
        """GroupNorm (one group per channel) with statistics of each job's whole window."""
        total, squares = h.double().sum(-1), (h.double() ** 2).sum(-1)
        means, stds = [], []
        for i, w in enumerate(group):
            chunks = w.cache.chunks
            chunks.append(_Chunk(w.f_new, w.f_end, h.shape[-1], total[i], squares[i]))
            while chunks and chunks[0].end <= w.f_start:
                chunks.popleft()
            n = sum(c.count for c in chunks)
            mean = sum(c.total for c in chunks) / n
            var = (sum(c.squares for c in chunks) / n - mean**2).clamp(min=0.0)
            means.append(mean)
            stds.append(torch.sqrt(var + self.norm.eps))
        mean = torch.stack(means).float()[..., None]
        std = torch.stack(stds).float()[..., None]
        return (h - mean) / std * self.norm.weight[:, None] + self.norm.bias[:, None]

    @contextmanager
    def _features(self, frames: torch.Tensor) -> Iterator[None]:
        original = self.base.feature_extractor
        self.base.feature_extractor = _Fixed(frames)
        try:
            yield
        finally:
            self.base.feature_extractor = original


def _group_indices(items: list, key) -> list[list[int]]:  # type: ignore[no-untyped-def]
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return list(groups.values())


def _groups(items: list[_Work], key) -> list[list[_Work]]:  # type: ignore[no-untyped-def]
    return [[items[i] for i in idx] for idx in _group_indices(items, key)]
