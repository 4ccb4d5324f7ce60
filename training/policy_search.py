"""Choosing a model's escalation settings on its validation speakers' whole calls.

The windows' probabilities of scored calls do not depend on the policy (with ``model.adapt`` off), so each
candidate setting replays the daemon's own :class:`EscalationPolicy` over the scores the production path produced,
and is judged by the call-level figures. The chosen setting keeps calm calls within the false-alert budget and,
among those, alerts within ``DELAY_AIM_S`` (median, after onset) where it can, catching the most anger (calm→angry
after onset, angry from the first second within 15 s; then the fewest escalations on calm and calm→happy calls,
then the shortest median delay).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from emovoice_daemon.config import EscalationConfig
from emovoice_daemon.judgement.policy import replay as replay_scores
from training.call_eval import CallOutcome, call_metrics

BUDGET = {"calm_alert_pct": 5.0, "calm_any_pct": 15.0, "ramp_alert_before_onset_pct": 5.0}  # on validation calls
DELAY_AIM_S = 7.0  # median onset -> alert on validation calls (the target, 8 s, with a margin for unseen voices)
GRID = {"smoothing": (0.3, 0.5, 0.7), "enter": (0.5, 0.6, 0.7, 0.8, 0.85, 0.9), "alert_above_enter": (0.0, 0.05, 0.1),
        "min_duration_s": (1.0, 2.0, 3.0, 4.0)}


def replay(outcome: CallOutcome, cfg: EscalationConfig) -> CallOutcome:
    """The call as it would have gone under ``cfg``: the same window scores through a fresh policy."""
    return dataclasses.replace(outcome, raised=replay_scores(cfg, ((end, p) for _, end, p in outcome.scores)))


def candidates() -> list[dict[str, Any]]:
    """Every setting of the grid: EMA smoothing, enter/alert thresholds, minimum duration; no trend rule."""
    out = []
    for smoothing, enter, above, duration in itertools.product(*GRID.values()):
        alert = round(min(0.95, enter + above), 2)
        out.append({"method": "ema", "smoothing": smoothing, "enter": enter, "exit": round(enter - 0.2, 2), "alert": alert,
                    "min_duration_s": duration, "trend_rise": 0.0})
    return out


def _score(m: dict[str, Any]) -> tuple:
    delay = m["ramp_delay_median_s"] if m["ramp_delay_median_s"] is not None else 99.0
    return (delay <= DELAY_AIM_S, (m["ramp_detected_pct"] or 0) + (m["angry_within_15s_pct"] or 0),
            -(m["calm_any_pct"] or 0), -(m["happy_alert_pct"] or 0), -delay)


def choose(outcomes: Sequence[CallOutcome], base: EscalationConfig) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The best setting within BUDGET and its figures; None when no candidate keeps calm calls quiet enough."""
    best = None
    for values in candidates():
        cfg = dataclasses.replace(base, **values, profiles={})
        m = call_metrics([replay(o, cfg) for o in outcomes])
        if any((m[k] or 0) > limit for k, limit in BUDGET.items()):
            continue
        if best is None or _score(m) > _score(best[1]):
            best = (values, m)
    return best
