"""Streaming CNN front-end for HuBERT / wav2vec2-shaped classifiers.

Their convolutional feature encoder is local (HuBERT-base: 25 ms receptive field, 20 ms
stride), so each leg caches its encoder frames and each hop computes only the frames of
the new audio; the transformer still sees the whole window. The one non-local piece is
the first layer's GroupNorm (one group per channel: each channel normalised over the
whole input). The first conv layer is cheap (about 1% of the encoder), so it runs over
the whole window every hop and the window's statistics are exact; the new frames are
then exactly those of a full-window pass. Cached frames were normalised with an earlier
window's statistics: a cached chunk whose statistics drifted more than
``drift_tolerance`` (speech after silence, a level change) is recomputed, the others are
reused. Encoders with per-frame LayerNorm (``feat_extract_norm="layer"``) stream exactly.
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from emovoice_daemon.scoring.models.loader import Classifier

WHOLE_SHARE = 0.75  # recompute the whole window when this share of its frames must be computed anyway



def _base_model(model: nn.Module | None) -> nn.Module | None:
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
    norm = _group_norm(base.feature_extractor.conv_layers[0])
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
    """A run of cached frames [start, end) and the first-layer statistics it was normalised with."""

    start: int
    end: int
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


@dataclass
class LegCache:
    """One leg's encoder frames (channels, n) starting at global frame ``first``."""

    frames: torch.Tensor | None = None
    first: int = 0
    chunks: deque[_Chunk] = field(default_factory=deque)
    computed: int = 0  # frames computed (new or recomputed), for the cost figures
    recomputed: int = 0  # of which recomputed because their normalisation drifted

    @property
    def next_frame(self) -> int:
        return self.first + (0 if self.frames is None else self.frames.shape[1])

    def nbytes(self) -> int:
        return 0 if self.frames is None else self.frames.element_size() * self.frames.nelement()

    def store(self, first: int, frames: torch.Tensor) -> None:
        """Put frames [first, first + n) in the cache: appended when new, overwritten when recomputed."""
        self.computed += frames.shape[1]
        if self.frames is None:
            self.frames, self.first = frames, first
            return
        at = first - self.first
        self.frames = torch.cat([self.frames[:, :at], frames, self.frames[:, at + frames.shape[1] :]], dim=1)

    def trim(self, first: int) -> None:
        """Forget frames and chunks before ``first``."""
        while self.chunks and self.chunks[0].end <= first:
            self.chunks.popleft()
        if self.frames is not None and first > self.first:
            self.frames, self.first = self.frames[:, first - self.first :], first


@dataclass
class _Work:
    """One window of one leg: the frames it spans and the first one not cached yet."""

    cache: LegCache
    audio: np.ndarray
    start: int  # global sample index of audio[0]
    f_start: int
    f_end: int
    f_new: int


class _Fixed(nn.Module):
    """Stands in for the feature encoder and returns precomputed frames."""

    def __init__(self, frames: torch.Tensor) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.frames


class StreamingFrontEnd:
    """Scores windows of many legs, computing only each leg's new (or drifted) encoder frames."""

    def __init__(self, classifier: Classifier, drift_tolerance: float = 0.05) -> None:
        """``drift_tolerance``: mean over channels of |Δmean|/std + |Δstd|/std above which a cached chunk is recomputed."""
        base = _base_model(classifier.model)
        if base is None or not supports(classifier):
            raise ValueError(f"model {classifier.name} has no cacheable conv feature encoder")
        self.classifier, self.base, self.drift_tolerance = classifier, base, drift_tolerance
        self.layers = base.feature_extractor.conv_layers
        self.norm = _group_norm(self.layers[0])
        self.field, self.stride = encoder_geometry(self.layers)
        self.stride0 = self.layers[0].conv.stride[0]

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
            for group in _group_indices(work, lambda w: len(w.audio)):
                self._encode([work[i] for i in group])
            for i, w in zip(idx, work):
                w.cache.trim(w.f_start)
                frames[i] = w.cache.frames[:, : w.f_end - w.f_start].clone()
        return frames

    def _plan(self, cache: LegCache, audio: np.ndarray, start: int) -> _Work:
        f_start, f_end = self.frame_span(start, start + len(audio))
        if f_end <= f_start:
            raise ValueError(f"window of {len(audio)} samples is shorter than the encoder's receptive field")
        if not f_start <= cache.next_frame <= f_end:  # gap or rewind: recompute the window whole
            cache.frames, cache.first = None, f_start
            cache.chunks.clear()
        return _Work(cache, audio, start, f_start, f_end, cache.next_frame)

    def _encode(self, group: list[_Work]) -> None:
        """Compute the new frames of equal-length windows, and recompute drifted chunks."""
        x = self.classifier.to_device(np.stack([w.audio for w in group]))[:, None, :]
        if self.norm is None:  # per-frame normalisation: the new frames alone are exact
            for row, w in enumerate(group):
                if w.f_end > w.f_new:
                    lo, hi = w.f_new * self.stride - w.start, (w.f_end - 1) * self.stride + self.field - w.start
                    w.cache.store(w.f_new, self._layers(self.layers, x[row : row + 1, :, lo:hi])[0])
            return
        h = self.layers[0].conv(x).float()  # whole windows: exact statistics
        mean = h.mean(-1)
        std = torch.sqrt(h.var(-1, unbiased=False) + self.norm.eps)
        todo: list[tuple[int, _Work, int, int]] = []  # (row, work, first, end frame) runs to compute
        for row, w in enumerate(group):
            for first, end in self._runs(w, mean[row], std[row]):
                todo.append((row, w, first, end))
        for batch in _group_indices(todo, lambda t: t[3] - t[2]):
            rows = [todo[i][0] for i in batch]
            lo = [(todo[i][2] * self.stride - todo[i][1].start) // self.stride0 for i in batch]
            n = self._positions(todo[batch[0]][3] - todo[batch[0]][2])
            h_runs = torch.stack([h[r, :, a : a + n] for r, a in zip(rows, lo)])
            y = (h_runs - mean[rows][..., None]) / std[rows][..., None]
            y = self.layers[0].activation(y * self.norm.weight[:, None] + self.norm.bias[:, None])
            out = self._layers(self.layers[1:], y)
            for i, frames in zip(batch, out):
                _, w, first, end = todo[i]
                w.cache.store(first, frames[:, : end - first])

    def _runs(self, w: _Work, mean: torch.Tensor, std: torch.Tensor) -> list[tuple[int, int]]:
        """Frame ranges to compute for a window: new frames plus drifted chunks, merged; the chunk records follow."""
        chunks = [c for c in w.cache.chunks if c.end > w.f_start]
        drifted = [c for c in chunks
                   if ((c.mean - mean).abs() / std + (c.std / std - 1).abs()).mean() > self.drift_tolerance]
        runs = _merge([(max(c.start, w.f_start), c.end) for c in drifted] + [(w.f_new, w.f_end)])
        if sum(b - a for a, b in runs) >= WHOLE_SHARE * (w.f_end - w.f_start):
            runs = [(w.f_start, w.f_end)]  # one pass over the window is cheaper, and exact
        runs = [(a, b) for a, b in runs if b > a]
        kept = [c for c in chunks if not any(a <= max(c.start, w.f_start) and c.end <= b for a, b in runs)]
        w.cache.chunks = deque(sorted(kept + [_Chunk(a, b, mean, std) for a, b in runs], key=lambda c: c.start))
        w.cache.recomputed += sum(b - a for a, b in runs) - (w.f_end - w.f_new)
        return runs

    def _positions(self, n_frames: int) -> int:
        """First-layer outputs that ``n_frames`` encoder frames depend on."""
        k0 = self.layers[0].conv.kernel_size[0]
        return ((n_frames - 1) * self.stride + self.field - k0) // self.stride0 + 1

    @staticmethod
    def _layers(layers: Any, h: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h)
        return h.float()

    @contextmanager
    def _features(self, frames: torch.Tensor) -> Iterator[None]:
        original = self.base.feature_extractor
        self.base.feature_extractor = _Fixed(frames)
        try:
            yield
        finally:
            self.base.feature_extractor = original


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of frame ranges, as sorted disjoint ranges."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(runs):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _group_indices(items: list[Any], key: Callable[[Any], int]) -> list[list[int]]:
    """Indices of ``items`` grouped by equal ``key``, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return list(groups.values())
