"""Chunked encoder front-end: each hop of a leg goes through the encoder once.

A chunked Whisper-encoder model (``chunk_s`` > 0 in its config) encodes a window as independent chunks and pools the
hidden states over the whole window from the chunks' time sums (:func:`~emovoice_daemon.scoring.models.whisper.
state_sums`, :func:`~emovoice_daemon.scoring.models.whisper.pool_sums`). When the hop is one chunk and the window whole
chunks, a leg's consecutive windows share all but their newest chunk: each leg keeps the sums of its recent chunks,
so the encoder runs on each second of audio once instead of ``window / hop`` times, and the features are exactly
those of the model's own ``pooled_features`` on the window.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emovoice_daemon.scoring.models.loader import Classifier
from emovoice_daemon.scoring.models.whisper import pool_sums


def supports(classifier: Classifier) -> bool:
    """True for a model that encodes its windows in chunks."""
    return getattr(classifier.model, "chunk", 0) > 0 and hasattr(classifier.model, "chunk_sums")


@dataclass
class LegChunks:
    """One leg's encoded chunks: model-rate start sample -> (time sums float64[S, 2, d], frames)."""

    sums: dict[int, tuple[torch.Tensor, int]] = field(default_factory=dict)
    computed: int = 0  # chunks encoded, for the cost figures
    owner: object = None  # the front-end (model) that encoded them: a switched model starts afresh

    def nbytes(self) -> int:
        return sum(s.element_size() * s.nelement() for s, _ in self.sums.values())


class ChunkedFrontEnd:
    """Pooled features of whole windows, encoding only the chunks a leg has not encoded yet."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.chunk = int(classifier.model.chunk)

    def fits(self, window: int, hop: int) -> bool:
        """Whether windows of ``window`` samples every ``hop`` (model rate) share chunks."""
        return hop == self.chunk and window % self.chunk == 0

    def features(self, items: Sequence[tuple[LegChunks, np.ndarray, int]]) -> np.ndarray:
        """float32[B, F] for ``(leg chunks, window audio at the model rate, model-rate index of its first sample)``;
        every window is whole chunks long."""
        todo: dict[tuple[int, int], tuple[LegChunks, int, np.ndarray]] = {}
        for cache, audio, start in items:
            if cache.owner is not self:
                cache.sums.clear()
                cache.owner = self
            for a in range(0, len(audio), self.chunk):
                if start + a not in cache.sums:
                    todo[id(cache), start + a] = (cache, start + a, audio[a : a + self.chunk])
        if todo:
            with torch.inference_mode(), self.classifier.autocast():
                x = self.classifier.to_device(np.stack([t[2] for t in todo.values()]))
                sums, frames = self.classifier.model.chunk_sums(x)
            for (cache, key, _), s in zip(todo.values(), sums.cpu()):
                cache.sums[key] = (s, frames)
                cache.computed += 1
        pooled = []
        for cache, audio, start in items:
            for key in [k for k in cache.sums if k < start]:
                del cache.sums[key]
            parts = [cache.sums[start + a] for a in range(0, len(audio), self.chunk)]
            pooled.append((torch.stack([s for s, _ in parts]).sum(0), sum(n for _, n in parts)))
        total = torch.stack([s for s, _ in pooled])
        return pool_sums(total, torch.tensor([n for _, n in pooled])).flatten(1).numpy()
