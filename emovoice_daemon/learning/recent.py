"""The features of each leg's recent windows, in memory, so a verdict finds the windows it concerns.

Per leg the windows of the last ``recent_s`` are kept (a deque; features as the engine gave them, float32[F]);
an ended leg's windows stay ``grace_s`` more, so a verdict given just after hang-up still finds them. Memory:
``recent_s / hop_s`` windows of ``4 F`` bytes per leg (the encoder model: F = 2048, 8 KiB a window).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from emovoice_daemon.outputs.events import Event
from emovoice_daemon.scoring.engine import WindowResult


@dataclass(frozen=True)
class Window:
    """One scored window of a leg: its time (leg seconds) and its unnormalised pooled features."""

    start_s: float
    end_s: float
    features: np.ndarray


@dataclass
class _LegWindows:
    windows: deque[Window] = field(default_factory=deque)
    ended_at: float | None = None  # monotonic time the leg ended


class RecentWindows:
    """``add`` is the CallManager's window sink, ``sink`` the EventBus sink that sees legs end."""

    def __init__(self, recent_s: float, grace_s: float) -> None:
        self.recent_s, self.grace_s = recent_s, grace_s
        self._legs: dict[tuple[str, str], _LegWindows] = {}

    def add(self, call_id: str, role: str, result: WindowResult) -> None:
        leg = self._legs.setdefault((call_id, role), _LegWindows())
        leg.windows.append(Window(result.start_s, result.end_s, result.features))
        while leg.windows and leg.windows[0].end_s < result.end_s - self.recent_s:
            leg.windows.popleft()

    def sink(self, event: Event) -> None:
        """EventBus sink: a ``call.ended`` starts its leg's grace period; ended legs past it are forgotten."""
        if event["type"] != "call.ended":
            return
        now = time.monotonic()
        leg = self._legs.get((event["call_id"], event["role"]))
        if leg is not None:
            leg.ended_at = now
        for key in [k for k, v in self._legs.items() if v.ended_at is not None and now - v.ended_at > self.grace_s]:
            del self._legs[key]

    def windows(self, call_id: str, role: str) -> list[Window]:
        """The leg's windows still held, oldest first."""
        leg = self._legs.get((call_id, role))
        return list(leg.windows) if leg is not None else []

    def nbytes(self) -> int:
        return sum(w.features.nbytes for leg in self._legs.values() for w in leg.windows)
