"""Behavioural cues from a call's separate customer and agent legs.

Both legs are cut into the same 20 ms frames (leg time) and each frame is voiced or not
(energy and zero-crossing gate of :mod:`.vad`). From the pair of voice-activity tracks:

- **talk-over**: both speaking for ``talk_over_min_s``, where a role is still speaking through
  unvoiced gaps shorter than a segment gap (pauses between words, unvoiced consonants: real
  overlapping speech is rarely voiced on both sides for a whole second); when the agent started it while the
  customer was speaking and the customer's smoothed NEGATIVE is at least
  ``escalate_talk_over_negative``, it is published as an escalation of the agent leg with
  reason ``agent_talk_over_upset_customer``, dated when the overlap reached ``talk_over_min_s``, cleared
  when it ends (dated at its last frame both voiced, or at the raise if that came later: never a negative
  duration); after a clear the next such cue waits ``talk_over_cooldown_s`` (a heated exchange is one
  cue, not one per sentence);
- **long silence**: neither voiced for ``long_silence_s``;

each talk-over and long silence is also published as a ``cue`` event when it is counted (``cue``:
``talk_over`` on the leg of the one who started speaking second, or ``long_silence`` on the agent leg:
dead air is the agent's to fill; ``at``: where it began, leg seconds);
- **pace**: voiced segments per minute for each role;
- **relative loudness**: agent minus customer mean level of voiced frames, in dB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emovoice_daemon.config import CuesConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import Event, EventBus
from emovoice_daemon.scoring.vad import FRAME_S, MAX_ZCR, frame_dbfs, zero_crossing_rate

RATE = 8000
FRAME = int(RATE * FRAME_S)
ROLES = ("customer", "agent")
SEGMENT_GAP_FRAMES = 10  # 200 ms of unvoiced frames ends a voiced segment
TALK_OVER_REASON = "agent_talk_over_upset_customer"


@dataclass
class _Track:
    """Voice activity of one role, frame by frame."""

    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    voiced: list[bool] = field(default_factory=list)
    speaking: list[bool] = field(default_factory=list)  # voiced, or in a gap shorter than a segment gap
    levels: list[float] = field(default_factory=list)  # dBFS of voiced frames
    segments: int = 0
    gap: int = SEGMENT_GAP_FRAMES
    run_start: int = 0  # frame where the current voiced segment started

    def add(self, pcm: np.ndarray, energy_dbfs: float) -> None:
        pcm = np.concatenate([self.pending, pcm])
        n = len(pcm) // FRAME * FRAME
        self.pending = pcm[n:]
        if not n:
            return
        db, zcr = frame_dbfs(pcm[:n], RATE), zero_crossing_rate(pcm[:n], RATE)
        for level, voiced in zip(db, (db > energy_dbfs) & (zcr <= MAX_ZCR)):
            if voiced:
                if self.gap >= SEGMENT_GAP_FRAMES:
                    self.segments += 1
                    self.run_start = len(self.voiced)
                self.gap = 0
                self.levels.append(float(level))
            else:
                self.gap += 1
            self.voiced.append(bool(voiced))
            self.speaking.append(self.gap < SEGMENT_GAP_FRAMES)


class CallCues:
    """Cue state of one call; fed with each leg's audio, publishes talk-over escalations."""

    def __init__(self, call_id: str, cfg: CuesConfig, energy_dbfs: float, bus: EventBus) -> None:
        self.call_id, self.cfg, self.energy_dbfs, self.bus = call_id, cfg, energy_dbfs, bus
        self.tracks = {role: _Track() for role in ROLES}
        self.customer_negative = 0.0
        self.talk_over_s = 0.0
        self.talk_overs = 0
        self.long_silences = 0
        self._frame = 0  # frames judged jointly so far
        self._overlap = 0  # frames of the current overlap, gaps included
        self._overlap_end = 0  # frame after the last one both voiced
        self._silence = 0
        self._raised_at: float | None = None
        self._cleared_at = float("-inf")

    def feed(self, role: str, pcm: np.ndarray) -> None:
        """Add int16 8 kHz audio of ``role`` (customer or agent)."""
        self.tracks[role].add(pcm, self.energy_dbfs)
        done = min(len(t.voiced) for t in self.tracks.values())
        while self._frame < done:
            self._judge(self._frame)
            self._frame += 1

    def _judge(self, k: int) -> None:
        cust, agent = self.tracks["customer"], self.tracks["agent"]
        both, neither = cust.voiced[k] and agent.voiced[k], not (cust.voiced[k] or agent.voiced[k])
        self._silence = 0 if not neither else self._silence + 1
        if self._silence == round(self.cfg.long_silence_s / FRAME_S):
            self.long_silences += 1
            metrics.CUE_LONG_SILENCES.inc()
            self._publish("cue", "agent", cue="long_silence", at=round((k + 1 - self._silence) * FRAME_S, 2))
        if both:
            self.talk_over_s += FRAME_S
            metrics.CUE_TALK_OVER_SECONDS.inc(FRAME_S)
            self._overlap_end = k + 1
        if (both or self._overlap) and cust.speaking[k] and agent.speaking[k]:
            self._overlap += 1
            if self._overlap == round(self.cfg.talk_over_min_s / FRAME_S):
                self.talk_overs += 1
                metrics.CUE_TALK_OVERS.inc()
                second = "agent" if agent.run_start > cust.run_start else "customer"
                self._publish("cue", second, cue="talk_over", at=round((k + 1 - self._overlap) * FRAME_S, 2))
                if self._should_raise(k):
                    self._raise(k)
        elif self._overlap:
            self._overlap = 0
            self.clear()

    def _should_raise(self, k: int) -> bool:
        """The agent started this overlap, the customer is upset, and the last cue cleared long enough ago."""
        cust, agent = self.tracks["customer"], self.tracks["agent"]
        return (agent.run_start > cust.run_start and self.customer_negative >= self.cfg.escalate_talk_over_negative
                and k * FRAME_S - self._cleared_at >= self.cfg.talk_over_cooldown_s)

    def _raise(self, k: int) -> None:
        self._raised_at = k * FRAME_S
        self._publish("escalation.raised", "agent", severity="watch", reason=TALK_OVER_REASON, at=round(self._raised_at, 2),
                      negative_smoothed=round(self.customer_negative, 4))

    def clear(self) -> None:
        """Clear a raised talk-over whose overlap is over (or the call ended)."""
        if self._raised_at is None:
            return
        self._cleared_at = max(self._overlap_end * FRAME_S, self._raised_at)
        self._publish("escalation.cleared", "agent", at=round(self._cleared_at, 2),
                      negative_smoothed=round(self.customer_negative, 4),
                      duration_s=round(self._cleared_at - self._raised_at, 2), reason=TALK_OVER_REASON)
        self._raised_at = None

    def _publish(self, type_: str, role: str, **fields: Any) -> None:
        self.bus.publish(self.bus.make_event(type_, self.call_id, role, **fields))

    def summary(self) -> dict[str, Any]:
        """Per-call cue figures (also observed into the Prometheus histograms at call end)."""
        minutes = max(self._frame * FRAME_S / 60, 1e-9)
        level = {r: float(np.mean(t.levels)) if t.levels else None for r, t in self.tracks.items()}
        loudness = (round(level["agent"] - level["customer"], 1)
                    if level["agent"] is not None and level["customer"] is not None else None)
        return {"talk_over_s": round(self.talk_over_s, 2), "talk_overs": self.talk_overs,
                "long_silences": self.long_silences,
                "pace_per_min": {r: round(t.segments / minutes, 1) for r, t in self.tracks.items()},
                "agent_minus_customer_db": loudness}


class CueTracker:
    """The live calls' cues; a bus sink keeps each call's customer NEGATIVE level current."""

    def __init__(self, cfg: CuesConfig, energy_dbfs: float, bus: EventBus) -> None:
        self.cfg, self.energy_dbfs, self.bus = cfg, energy_dbfs, bus
        self.calls: dict[str, CallCues] = {}

    def open(self, call_id: str) -> CallCues:
        cues = self.calls[call_id] = CallCues(call_id, self.cfg, self.energy_dbfs, self.bus)
        return cues

    def close(self, call_id: str) -> dict[str, Any] | None:
        """Forget a call; returns its summary and records it in the metrics."""
        cues = self.calls.pop(call_id, None)
        if cues is None:
            return None
        cues.clear()
        summary = cues.summary()
        if summary["agent_minus_customer_db"] is not None:
            metrics.CUE_LOUDNESS_DIFF.observe(summary["agent_minus_customer_db"])
        for role, pace in summary["pace_per_min"].items():
            metrics.CUE_PACE.labels(role).observe(pace)
        return summary

    def sink(self, event: Event) -> None:
        """EventBus sink: track the customer leg's smoothed NEGATIVE."""
        cues = self.calls.get(event.get("call_id", ""))
        if cues is not None and event["type"] == "score" and event["role"] == "customer":
            cues.customer_negative = float(event.get("negative_smoothed", 0.0))
