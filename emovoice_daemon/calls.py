"""Call legs: the state of one voice stream of one call, from first audio to call.ended.

A source (AudioSocket, RTP, SIP) starts a leg, feeds it 8 kHz int16 audio and ends it.
The leg hands audio to the scoring engine, runs the escalation policy on each result and
publishes the events. Leg ids are ``"{call_id}:{role}"``.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Callable

import numpy as np

from emovoice_daemon.judgement.policy import EscalationPolicy
from emovoice_daemon.judgement.summary import LegSummary
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.scoring.engine import ScoringEngine, WindowResult
from emovoice_daemon.scoring.models.compact import LABELS

log = logging.getLogger(__name__)

HOLD_AFTER_S = 5.0  # this long of sound without speech (music, tones) and the leg is on hold


class Leg:
    """One voice stream of one call."""

    def __init__(self, manager: "CallManager", call_id: str, role: str, source: str, meta: dict[str, Any]) -> None:
        self.manager, self.call_id, self.role, self.source, self.meta = manager, call_id, role, source, meta
        self.leg_id = f"{call_id}:{role}"
        self.policy = manager.policy_factory(meta)
        self.stats = LegSummary()
        self.started = time.monotonic()
        self.samples = 0
        self.ended = False
        self.on_hold = False
        self.escalation_id = ""  # the active escalation's id: its raise (and upgrade) and its clear carry it
        self._nonspeech_since: float | None = None

    @property
    def duration_s(self) -> float:
        return self.samples / 8000

    def feed(self, pcm: np.ndarray) -> None:
        """Add int16 8 kHz audio."""
        if not self.ended:
            self.samples += len(pcm)
            self.manager.engine.push(self.leg_id, pcm)

    def dtmf(self, digit: str) -> None:
        self._publish("call.dtmf", digit=digit, at=round(self.duration_s, 2))

    def on_result(self, result: WindowResult) -> None:
        """Engine callback: publish the score and any escalation transitions."""
        self._track_hold(result)
        if result.probs is None:
            self.stats.add(result.start_s, result.end_s, None, skipped=result.skipped)
            return
        probs = {label: round(float(p), 4) for label, p in zip(LABELS, result.probs)}
        transitions = self.policy.update(result.end_s, probs)
        self.stats.add(result.start_s, result.end_s, probs, self.policy.smoothed)
        self._publish("score", window={"start": round(result.start_s, 2), "end": round(result.end_s, 2)},
                      probs=probs, label=max(probs, key=probs.get),
                      negative_smoothed=round(self.policy.smoothed, 4),
                      lag_ms=round(result.latency_ms, 1), model=self.manager.model_info)
        if result.features is not None and self.manager.window_sink is not None:
            self.manager.window_sink(self.call_id, self.role, result)
        for tr in transitions:
            self.stats.transition(tr)
            if tr.kind == "raised" and not self.escalation_id:
                self.escalation_id = secrets.token_hex(8)
            self._publish(f"escalation.{tr.kind}", escalation_id=self.escalation_id, **tr.fields())
            if tr.kind == "cleared":
                self.escalation_id = ""

    def _track_hold(self, result: WindowResult) -> None:
        """``call.hold`` when the leg has carried sound but no speech for HOLD_AFTER_S, and again when speech is back."""
        if result.skipped == "nonspeech":
            since = self._nonspeech_since = result.start_s if self._nonspeech_since is None else self._nonspeech_since
            if not self.on_hold and result.end_s - since >= HOLD_AFTER_S:
                self.on_hold = True
                self._publish("call.hold", on_hold=True, at=round(result.end_s, 2))
        elif result.skipped is None:
            self._nonspeech_since = None
            if self.on_hold:
                self.on_hold = False
                self._publish("call.hold", on_hold=False, at=round(result.end_s, 2))

    async def end(self, reason: str, extra: dict[str, Any] | None = None) -> None:
        """Score what is buffered, then publish call.ended (``extra`` joins its summary). Safe to call twice."""
        if self.ended:
            return
        self.ended = True
        try:
            await self.manager.engine.close_leg(self.leg_id)
        finally:
            summary = {**self.stats.summary(self.duration_s), **(extra or {})}
            self._publish("call.ended", reason=reason, summary=summary)
            self.manager.forget(self)

    def _publish(self, type_: str, **fields: Any) -> None:
        bus = self.manager.bus
        bus.publish(bus.make_event(type_, self.call_id, self.role, **fields))


class CallManager:
    """Creates and tracks the live legs."""

    def __init__(self, engine: ScoringEngine, bus: EventBus,
                 policy_factory: Callable[[dict[str, Any]], EscalationPolicy],
                 model_info: dict[str, Any],
                 window_sink: Callable[[str, str, WindowResult], None] | None = None) -> None:
        """``window_sink(call_id, role, result)`` gets each scored window that has features (the verdicts'
        memory); ``model_info`` and ``policy_factory`` may be replaced while legs live (a model switch)."""
        self.engine, self.bus, self.policy_factory, self.model_info = engine, bus, policy_factory, model_info
        self.window_sink = window_sink
        self.legs: dict[str, Leg] = {}
        self.expected: dict[str, dict[str, Any]] = {}  # call id -> meta given before the call started

    def expect(self, call_id: str, meta: dict[str, Any]) -> None:
        """Meta for a call about to start (e.g. its ``name`` and ``agent``), merged into each of its legs' meta
        (``call.started``; the source's own keys win) until its last leg ends."""
        self.expected[call_id] = meta

    def start_leg(self, call_id: str, role: str, source: str, meta: dict[str, Any]) -> Leg:
        """Open a leg and publish call.started; a leg id already live is a ValueError."""
        meta = {**self.expected.get(call_id, {}), **meta}
        leg = Leg(self, call_id, role, source, meta)
        if leg.leg_id in self.legs:
            raise ValueError(f"call leg {leg.leg_id} is already live")
        self.legs[leg.leg_id] = leg
        self.engine.open_leg(leg.leg_id, leg.on_result)
        metrics.CALLS_TOTAL.labels(source).inc()
        metrics.LIVE_LEGS.set(len(self.legs))
        leg._publish("call.started", source=source, meta=meta, model=self.model_info)
        return leg

    def forget(self, leg: Leg) -> None:
        self.legs.pop(leg.leg_id, None)
        metrics.LIVE_LEGS.set(len(self.legs))
        if not any(other.call_id == leg.call_id for other in self.legs.values()):
            self.expected.pop(leg.call_id, None)

    async def end_all(self, reason: str) -> None:
        await asyncio.gather(*(leg.end(reason) for leg in list(self.legs.values())))
