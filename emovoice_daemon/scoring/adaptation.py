"""Adaptation to the line: a model's pooled features (the encoder model, a compact student) centred on statistics the
daemon learns.

* **Site** statistics: a running mean (and variance) over every window the daemon scores (all legs),
  starting from the model's training statistics, remembering about ``site_memory`` windows, and saved
  to ``state_path`` (loaded again at start), so a restart keeps what the site taught it. Features are
  centred on the site mean and scaled by the *training* spread (``site_variance`` False, the default): a
  site of few voices has a narrow variance that would inflate every difference between speakers.
* **Leg** statistics (``leg_cap`` > 0; off by default): the running mean of the leg's own windows, blended
  into the site mean with weight ``n / (n + leg_prior)`` for ``n`` windows heard, capped at ``leg_cap``.
  Off because at call level it pulls a caller who stays angry toward their own average (docs/training.md).

A window is judged against the statistics from before it, then added to them. The site statistics are
saved when a leg closes and every ``save_every`` windows. ``normalise`` runs in the inference thread and
``close_leg`` on the event loop, so both hold a lock.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Running:
    """Mean and variance, updated one vector at a time with rate ``weight / min(count, memory)`` (a vector of
    weight 2 counts as two)."""

    mean: np.ndarray
    var: np.ndarray
    count: float

    def add(self, x: np.ndarray, memory: float, weight: float = 1.0) -> None:
        self.count = min(self.count + weight, memory)
        rate = min(1.0, weight / self.count)
        delta = x - self.mean
        self.mean = self.mean + rate * delta
        self.var = (1.0 - rate) * (self.var + rate * delta * delta)


def leg_weight(windows: float, prior: float, cap: float) -> float:
    """How much of a leg's own mean replaces the site's after ``windows`` windows: ``n / (n + prior)``, capped."""
    return min(cap, windows / (windows + prior)) if prior > 0 else cap


class LineAdapter:
    """Centres feature vectors on the site's mean (blended with the leg's own mean when ``leg_cap`` > 0)."""

    def __init__(self, prior_mean: np.ndarray, prior_std: np.ndarray, state_path: Path | None = None,
                 prior_windows: float = 200.0, site_memory: float = 20000.0, leg_prior: float = 20.0,
                 leg_cap: float = 0.0, save_every: int = 1000, site_variance: bool = False) -> None:
        self.site_memory, self.leg_prior, self.leg_cap, self.save_every = site_memory, leg_prior, leg_cap, save_every
        self.site_variance = site_variance
        self.prior_var = np.square(np.asarray(prior_std, np.float64))
        self.state_path = state_path
        self._lock = threading.Lock()
        self._unsaved = 0
        prior = Running(np.asarray(prior_mean, np.float64), np.square(np.asarray(prior_std, np.float64)), prior_windows)
        self.site = self._load(prior) if state_path is not None else prior
        self.legs: dict[str, Running] = {}

    def _load(self, prior: Running) -> Running:
        if not self.state_path.is_file():
            return prior
        try:
            with np.load(self.state_path) as z:
                site = Running(z["mean"], z["var"], float(z["count"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("site statistics %s unreadable (%s): starting from the model's", self.state_path, exc)
            return prior
        if site.mean.shape != prior.mean.shape:
            log.warning("site statistics %s are for another model (%d features, not %d): starting from the model's",
                        self.state_path, site.mean.size, prior.mean.size)
            return prior
        log.info("site statistics loaded from %s (%.0f windows)", self.state_path, site.count)
        return site

    def save(self) -> None:
        """Write the site statistics atomically (no-op without a state path); a failure is logged, not raised."""
        if self.state_path is None:
            return
        try:
            self._write()
        except OSError as exc:
            log.warning("cannot save site statistics to %s: %s", self.state_path, exc)
        self._unsaved = 0

    def _write(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, mean=self.site.mean, var=self.site.var, count=self.site.count)
        os.replace(tmp, self.state_path)

    def normalise(self, legs: Sequence[str], feats: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
        """Standardise each row with its leg's blended statistics, then learn from it with its weight (1 each
        without ``weights``; 0: judged, not learnt from)."""
        feats = np.asarray(feats, np.float64)
        out = np.empty_like(feats)
        weights = np.ones(len(feats)) if weights is None else np.asarray(weights, np.float64)
        with self._lock:
            for i, (leg, x, w) in enumerate(zip(legs, feats, weights)):
                out[i] = self._judge_and_learn(leg, x, w)
            self._unsaved += int(np.count_nonzero(weights))
            if self._unsaved >= self.save_every:
                self.save()
        return out.astype(np.float32)

    def _judge_and_learn(self, leg: str, x: np.ndarray, weight: float) -> np.ndarray:
        mean = self.site.mean
        own = self.legs.get(leg)
        if own is not None:
            mean = mean + leg_weight(own.count, self.leg_prior, self.leg_cap) * (own.mean - mean)
        z = (x - mean) / np.sqrt((self.site.var if self.site_variance else self.prior_var) + 1e-8)
        if weight <= 0:
            return z
        if own is None:
            self.legs[leg] = Running(x.copy(), np.zeros_like(x), weight)
        else:
            own.add(x, np.inf, weight)
        self.site.add(x, self.site_memory, weight)
        return z

    def close_leg(self, leg: str) -> None:
        """Forget a finished leg; save the site statistics."""
        with self._lock:
            if self.legs.pop(leg, None) is not None:
                self.save()
