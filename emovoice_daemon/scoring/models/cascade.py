"""A cascade: a cheap model on every window, a costly one only on the windows where the cheap one hears possible anger.

A cascade directory holds no weights, only ``config.json`` naming two model directories (relative to it), a gate and
a sample share, and the cascade's own ``escalation.json`` (chosen on validation calls of the cascade)::

    {"model_type": "emovoice-cascade", "first": "../student", "second": "../encoder", "gate": 0.2, "sample": 0.1,
     "quantize_int8": true}

The first model scores every window at its own rate (the engine's). The second hears, resampled to its rate, the
windows whose first P(NEGATIVE) reaches ``gate`` and a ``sample`` share of the others (chosen by the CRC-32 of the
window's samples); its probabilities replace the first's on each. Each stage keeps its own line adapter: the second's
site statistics are learnt from the sampled windows only, each counting ``1 / sample`` (the gated ones, suspicious by
choice, would pull the site mean toward anger), and persist beside the first's (``<site_stats_path stem>.second.npz``).
The window features a verdict store keeps are the first's. ``quantize_int8`` is what ``model.quantize_int8: model`` means for both models.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring.adaptation import LineAdapter
from emovoice_daemon.scoring.models.compact import LABELS
from emovoice_daemon.scoring.resample import resample

if TYPE_CHECKING:
    from emovoice_daemon.scoring.models.loader import Classifier

CASCADE_TYPE = "emovoice-cascade"
NEGATIVE = LABELS.index("NEGATIVE")  # its column in the classifiers' probabilities


def second_stats_path(path: str) -> str:
    """Where the second stage keeps its site statistics, beside the first's (``''``: not kept)."""
    if not path:
        return ""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.second{p.suffix or '.npz'}"))


def cascade_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with a cascade's ``config.json`` (None when nothing is)."""
    for key in ("first", "second"):
        if not isinstance(config.get(key), str) or not config[key]:
            return f"{key} must name a model directory (relative to the cascade's), got {config.get(key)!r}"
    gate, sample = config.get("gate"), config.get("sample", 0.0)
    if not _number(gate) or not 0.0 < gate <= 1.0:
        return f"gate must be a number in (0, 1] (the first model's P(NEGATIVE) that calls the second), got {gate!r}"
    if not _number(sample) or not 0.0 <= sample < 1.0:
        return f"sample must be a number in [0, 1) (the share of other windows the second hears), got {sample!r}"
    if not isinstance(config.get("quantize_int8", False), bool):
        return f"quantize_int8 must be true or false (both models' linear layers), got {config['quantize_int8']!r}"
    return None


def sampled_window(window: np.ndarray, share: float) -> bool:
    """Whether a window is in the sample: the CRC-32 of its samples in the lowest ``share`` of its range (the same
    window is always in or out, whatever batch it comes in: evaluations repeat exactly)."""
    return zlib.crc32(np.ascontiguousarray(window, np.float32).tobytes()) < share * 2**32


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Cascade:
    """Two loaded classifiers behind the one interface the engine scores with."""

    first: Classifier
    second: Classifier
    gate: float
    sample: float
    name: str
    model_dir: str
    escalation: dict[str, Any] = field(default_factory=dict)
    trained: bool = True

    @property
    def sampling_rate(self) -> int:
        return self.first.sampling_rate

    @property
    def model(self) -> torch.nn.Module:
        """The first model (what runs on every window)."""
        return self.first.model

    @property
    def adapters(self) -> list[LineAdapter]:
        return [a for a in (self.first.adapter, self.second.adapter) if a is not None]

    def predict(self, batch: np.ndarray, legs: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities (see :meth:`predict_with_features`)."""
        return self.predict_with_features(batch, legs)[0]

    def predict_with_features(self, batch: np.ndarray, legs: Sequence[str] | None = None
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        """The first model's probabilities and features, its probabilities replaced by the second's on the windows
        whose P(NEGATIVE) reaches the gate and on the sampled ones."""
        probs, feats = self.first.predict_with_features(batch, legs)
        adapts = legs is not None and self.second.adapter is not None and self.sample > 0
        sampled = np.array([adapts and sampled_window(w, self.sample) for w in batch], bool)
        idx = np.flatnonzero(sampled | (probs[:, NEGATIVE] >= self.gate))
        metrics.CASCADE_SECOND.inc(len(idx))
        if len(idx):
            audio = resample(np.asarray(batch, np.float32)[idx], self.first.sampling_rate, self.second.sampling_rate)
            weights = sampled[idx] / self.sample if self.sample > 0 else np.zeros(len(idx))  # gated: judged only
            probs[idx] = self.second.predict(audio, None if legs is None else [legs[i] for i in idx], weights)
        return probs, feats
