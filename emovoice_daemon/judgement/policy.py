"""Escalation policy: turns a leg's stream of window scores into raise/clear transitions.

The NEGATIVE probability is smoothed (EMA or running median). An escalation is raised
when the smoothed value stays at or above ``enter`` for ``min_duration_s`` (severity
``alert`` if it is at or above ``alert`` by then, else ``watch``), or when it stays
between ``exit`` and ``enter`` while having risen by ``trend_rise`` within
``trend_window_s``, for ``min_duration_s`` ("frustration increasing", severity
``watch``). A ``watch`` is upgraded to ``alert`` once the smoothed value stays at
or above ``alert`` for ``min_duration_s``. It clears once the smoothed value stays below
``exit`` for ``clear_duration_s`` (hysteresis); after a clear no new escalation is raised
for ``cooldown_s``. Profiles in ``escalation.profiles`` override keys per queue or tenant.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from emovoice_daemon.config import EscalationConfig

SEVERITIES = ("watch", "alert")
EPS = 1e-9


@dataclass(frozen=True)
class Transition:
    """One change of a leg's escalation state; ``fields()`` are the event's fields."""

    kind: str  # "raised" or "cleared"
    at: float
    negative_smoothed: float
    severity: str = ""
    reason: str = ""
    duration_s: float = 0.0

    def fields(self) -> dict[str, Any]:
        common = {"at": round(self.at, 2), "negative_smoothed": round(self.negative_smoothed, 4)}
        if self.kind == "raised":
            return {"severity": self.severity, "reason": self.reason, **common}
        return {**common, "duration_s": round(self.duration_s, 2)}


THRESHOLDS = frozenset({"enter", "exit", "alert"})  # one probability scale: taken from one place, never mixed


def with_model_defaults(cfg: EscalationConfig, defaults: Mapping[str, Any]) -> EscalationConfig:
    """``cfg`` with the model's own escalation defaults for each key its config file did not set; the model's
    thresholds (enter/exit/alert) only when the config sets none of them."""
    skip = _config_owns(cfg)
    return dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if k not in skip})


def _config_owns(cfg: EscalationConfig) -> frozenset[str]:
    """Keys the model's defaults may not set: those the config file gave, and all thresholds if it gave one."""
    return cfg.given | (THRESHOLDS if cfg.given & THRESHOLDS else frozenset())


def describe(cfg: EscalationConfig, defaults: Mapping[str, Any]) -> str:
    """The escalation values in force and where each came from (config, model, built-in), on one line."""
    model = set(defaults) - _config_owns(cfg)
    keys = ("method", "smoothing", "enter", "exit", "alert", "min_duration_s", "clear_duration_s", "cooldown_s", "trend_rise")
    where = lambda k: "config" if k in cfg.given else "model" if k in model else "built-in"  # noqa: E731
    return ", ".join(f"{k} {getattr(cfg, k)} ({where(k)})" for k in keys)


def profile_for(cfg: EscalationConfig, meta: Mapping[str, Any]) -> EscalationConfig:
    """The config for a call: ``cfg`` with the overrides of the profile named by its queue or tenant."""
    for key in ("queue", "tenant"):
        name = meta.get(key)
        if isinstance(name, str) and name in cfg.profiles:
            return dataclasses.replace(cfg, profiles={}, **cfg.profiles[name])
    return cfg


def policy_factory(cfg: EscalationConfig) -> Callable[[Mapping[str, Any]], "EscalationPolicy"]:
    """A new EscalationPolicy per leg, with the profile its call's meta selects."""
    return lambda meta: EscalationPolicy(profile_for(cfg, meta))


class Smoother:
    """EMA (weight ``smoothing`` on the newest value) or median of the last ``median_windows`` values."""

    def __init__(self, cfg: EscalationConfig) -> None:
        self.method, self.alpha = cfg.method, cfg.smoothing
        self.recent: deque[float] = deque(maxlen=cfg.median_windows)
        self.value: float | None = None

    def add(self, x: float) -> float:
        if self.method == "median":
            self.recent.append(x)
            self.value = statistics.median(self.recent)
        else:
            self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
        return self.value


class EscalationPolicy:
    """Escalation state of one leg; feed it every scored window in order."""

    def __init__(self, cfg: EscalationConfig) -> None:
        self.cfg = cfg
        self.smoother = Smoother(cfg)
        self.history: deque[tuple[float, float]] = deque()  # (t, smoothed) within trend_window_s
        self.severity = ""  # "" when no escalation is active
        self.raised_at = 0.0
        self.cooldown_until = float("-inf")
        self._above_enter: float | None = None  # since when smoothed >= enter
        self._above_alert: float | None = None
        self._below_exit: float | None = None
        self._rising: float | None = None  # since when the trend rule's condition holds

    @property
    def smoothed(self) -> float:
        return self.smoother.value or 0.0

    @property
    def active(self) -> bool:
        return bool(self.severity)

    def update(self, t: float, probs: Mapping[str, float]) -> list[Transition]:
        """Add the window ending at ``t`` (leg seconds); return the transitions it causes."""
        s = self.smoother.add(float(probs["NEGATIVE"]))
        self._above_enter = _since(self._above_enter, s >= self.cfg.enter, t)
        self._above_alert = _since(self._above_alert, s >= self.cfg.alert, t)
        self._below_exit = _since(self._below_exit, s < self.cfg.exit, t)
        rise = self._trend_rise(t, s)
        rising = self.cfg.trend_rise > 0 and self.cfg.exit <= s < self.cfg.enter and rise >= self.cfg.trend_rise - EPS
        self._rising = _since(self._rising, rising, t)
        if self.active:
            return self._while_active(t, s)
        if t < self.cooldown_until:
            return []
        if _held(self._above_enter, t, self.cfg.min_duration_s):
            return [self._raise(t, s, "alert" if s >= self.cfg.alert else "watch", "negative above threshold")]
        if _held(self._rising, t, self.cfg.min_duration_s):
            return [self._raise(t, s, "watch", "frustration increasing")]
        return []

    def _while_active(self, t: float, s: float) -> list[Transition]:
        if _held(self._below_exit, t, self.cfg.clear_duration_s):
            duration = t - self.raised_at
            self.severity, self.cooldown_until = "", t + self.cfg.cooldown_s
            return [Transition("cleared", t, s, duration_s=duration)]
        if self.severity == "watch" and _held(self._above_alert, t, self.cfg.min_duration_s):
            self.severity = "alert"
            return [Transition("raised", t, s, "alert", "negative above alert threshold")]
        return []

    def _raise(self, t: float, s: float, severity: str, reason: str) -> Transition:
        self.severity, self.raised_at = severity, t
        return Transition("raised", t, s, severity, reason)

    def _trend_rise(self, t: float, s: float) -> float:
        """How far the smoothed value rose from its minimum within the trend window."""
        self.history.append((t, s))
        while self.history[0][0] < t - self.cfg.trend_window_s - EPS:
            self.history.popleft()
        return s - min(v for _, v in self.history)


def replay(cfg: EscalationConfig, scores: Iterable[tuple[float, float]]) -> list[tuple[float, str]]:
    """``(at, severity)`` of each escalation a fresh policy raises over ``(window end, P(NEGATIVE))`` scores."""
    policy = EscalationPolicy(cfg)
    return [(tr.at, tr.severity) for t, p in scores for tr in policy.update(t, {"NEGATIVE": p}) if tr.kind == "raised"]


def _since(since: float | None, condition: bool, t: float) -> float | None:
    """Track since when a condition has held: keep, start at ``t`` or reset."""
    if not condition:
        return None
    return t if since is None else since


def _held(since: float | None, t: float, duration: float) -> bool:
    return since is not None and t - since >= duration - EPS
