"""Post-call summary of one leg: time share per class, peak NEGATIVE, escalations, timeline.

``LegSummary`` is fed every window result (and the escalation transitions) while the leg
runs; ``summary(duration_s)`` is the ``summary`` field of ``call.ended``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from emovoice_daemon.judgement.policy import Transition
from emovoice_daemon.scoring.models.compact import LABELS

TIMELINE_POINTS = 120


@dataclass
class LegSummary:
    """Running figures for the post-call summary of one leg."""

    scored: int = 0
    skipped: int = 0
    nonspeech: int = 0  # skipped windows that held sound but no speech (music, tones)
    class_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LABELS, 0.0))
    peak_negative: float = 0.0
    peak_negative_at: float = 0.0
    escalation_log: list[dict[str, Any]] = field(default_factory=list)
    points: list[tuple[float, float, float]] = field(default_factory=list)  # (end_s, negative, smoothed)
    _covered_until: float = 0.0

    def add(self, start_s: float, end_s: float, probs: Mapping[str, float] | None, smoothed: float = 0.0,
            skipped: str | None = None) -> None:
        """One window result; ``probs`` None for a window skipped for ``skipped``. Time counts once across overlaps."""
        if probs is None:
            self.skipped += 1
            self.nonspeech += skipped == "nonspeech"
            return
        self.scored += 1
        label = max(LABELS, key=lambda k: probs[k])
        self.class_seconds[label] += max(0.0, end_s - max(start_s, self._covered_until))
        self._covered_until = max(self._covered_until, end_s)
        negative = float(probs["NEGATIVE"])
        if negative > self.peak_negative:
            self.peak_negative, self.peak_negative_at = negative, end_s
        self.points.append((end_s, negative, smoothed))

    def transition(self, tr: Transition) -> None:
        """Record a raise (a new period or an upgrade of the open one) or a clear."""
        open_period = self.escalation_log[-1] if self.escalation_log and "cleared_at" not in self.escalation_log[-1] else None
        if tr.kind == "cleared" and open_period is not None:
            open_period.update(cleared_at=round(tr.at, 2), duration_s=round(tr.duration_s, 2))
        elif tr.kind == "raised" and open_period is not None:
            open_period.update(severity=tr.severity)
        elif tr.kind == "raised":
            self.escalation_log.append({"at": round(tr.at, 2), "severity": tr.severity, "reason": tr.reason})

    def replay(self, event: Mapping[str, Any]) -> None:
        """One ``score`` or ``escalation.*`` event of the leg, read back from the event log (a killed run's
        leg); one a hand-edited log damaged is skipped."""
        try:
            if event["type"] == "score":
                self.add(event["window"]["start"], event["window"]["end"], event["probs"], event["negative_smoothed"])
            elif event["type"] in ("escalation.raised", "escalation.cleared"):
                self.transition(Transition(event["type"].split(".")[1], event["at"], event["negative_smoothed"],
                                           event.get("severity", ""), event.get("reason", ""),
                                           event.get("duration_s", 0.0)))
        except (KeyError, TypeError, ValueError):
            pass

    def summary(self, duration_s: float, timeline_points: int = TIMELINE_POINTS) -> dict[str, Any]:
        total = sum(self.class_seconds.values())
        share = {k: round(v / total, 3) if total else 0.0 for k, v in self.class_seconds.items()}
        return {"duration_s": round(duration_s, 2), "windows_scored": self.scored, "windows_skipped": self.skipped,
                "windows_nonspeech": self.nonspeech,
                "class_share": share, "peak_negative": round(self.peak_negative, 4),
                "peak_negative_at": round(self.peak_negative_at, 2), "escalations": len(self.escalation_log),
                "escalation_log": self.escalation_log, "timeline": downsample(self.points, timeline_points)}


def downsample(points: list[tuple[float, float, float]], n: int) -> dict[str, list[float]]:
    """At most ``n`` points: consecutive buckets keep their last time and their maximum values."""
    size = max(1, -(-len(points) // n))
    buckets = [points[i:i + size] for i in range(0, len(points), size)]
    return {"t": [round(b[-1][0], 2) for b in buckets],
            "negative": [round(max(p[1] for p in b), 3) for b in buckets],
            "smoothed": [round(max(p[2] for p in b), 3) for b in buckets]}
