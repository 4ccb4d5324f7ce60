"""A stand-in for calls.CallManager that records what a telephony source does with legs."""
from __future__ import annotations

from typing import Any

import numpy as np


class RecordingLeg:
    def __init__(self, call_id: str, role: str, source: str, meta: dict[str, Any]) -> None:
        self.call_id, self.role, self.source, self.meta = call_id, role, source, meta
        self.leg_id = f"{call_id}:{role}"
        self.chunks: list[np.ndarray] = []
        self.ended: str | None = None
        self.extra: dict[str, Any] | None = None

    def feed(self, pcm: np.ndarray) -> None:
        assert pcm.dtype == np.int16
        self.chunks.append(pcm)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    async def end(self, reason: str, extra: dict[str, Any] | None = None) -> None:
        if self.ended is None:
            self.ended, self.extra = reason, extra


class RecordingCalls:
    def __init__(self) -> None:
        self.legs: dict[str, RecordingLeg] = {}

    def start_leg(self, call_id: str, role: str, source: str, meta: dict[str, Any]) -> RecordingLeg:
        leg = RecordingLeg(call_id, role, source, meta)
        if leg.leg_id in self.legs:
            raise ValueError(f"call leg {leg.leg_id} is already live")
        self.legs[leg.leg_id] = leg
        return leg
