"""Health: ``ok``, or ``degraded`` with the reasons, whenever something is being lost now.

Reasons: ``eventlog`` (the JSONL log cannot write: events wait in memory or are lost),
``model_errors`` (the model raised on a window in the last ``service.health_window_s``),
``overload`` (more than ``service.health_max_overload`` of the windows due in that period
were skipped for back-pressure), and those of the components that report their own problem:
``jetstream`` (not connected, publishing failing, or events dropped in that period), ``workers``
(a worker process is down) and ``connections`` (AudioSocket connections refused in that period). ``/health``, the ``emovoice_health_degraded{reason}`` gauge
and systemd's ``STATUS=`` line all come from :meth:`HealthMonitor.check`; the monitor's
tick (every second) also retries the event log's backlog and reports each change.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Callable

from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.eventlog import EventLog

log = logging.getLogger(__name__)

OutcomeSource = Callable[[], Counter[str]]  # cumulative windows by outcome
Problem = Callable[[], "str | None"]  # a component's problem now (None: none)

REASONS = ("eventlog", "model_errors", "overload", "jetstream", "workers", "connections")
TICK_S = 1.0
MIN_WINDOWS = 10  # fewer windows due in the period say nothing about overload


class HealthMonitor:
    """Decides ``ok``/``degraded`` from the event log and the engine's window outcomes."""

    def __init__(self, event_log: EventLog, outcomes: OutcomeSource, window_s: float, max_overload: float,
                 problems: dict[str, Problem] | None = None) -> None:
        """``outcomes``: the cumulative windows by outcome, of every process that scores; ``problems``: by reason."""
        self.event_log, self.outcomes, self.problems = event_log, outcomes, problems or {}
        self.window_s, self.max_overload = window_s, max_overload
        self.on_change: Callable[[], object] = lambda: None
        self._history: deque[tuple[float, Counter[str]]] = deque([(time.monotonic(), Counter(outcomes()))])
        self._reported: dict[str, str] = {}

    def check(self) -> dict[str, str]:
        """The reasons for ``degraded`` now (empty: ok); sets the metric gauges to match."""
        reasons = {}
        log_ = self.event_log
        if log_.pending or log_.error:
            reasons["eventlog"] = (f"cannot write the event log ({log_.error}): {log_.pending} events waiting, "
                                   f"{log_.lost} lost")
        recent = self.outcomes() - self._history[0][1]
        if recent["error"]:
            reasons["model_errors"] = f"the model failed on {recent['error']} windows in the last {self.window_s:g} s"
        due = recent["scored"] + recent["overload"] + recent["error"]
        if due >= MIN_WINDOWS and recent["overload"] > self.max_overload * due:
            reasons["overload"] = (f"{recent['overload']} of {due} windows skipped for overload in the last "
                                   f"{self.window_s:g} s")
        for reason, problem in self.problems.items():
            if (why := problem()) is not None:
                reasons[reason] = why
        for reason in REASONS:
            metrics.HEALTH_DEGRADED.labels(reason).set(reason in reasons)
        return reasons

    def tick(self) -> None:
        """Retry the event log's backlog, move the period on, log and report any change."""
        if self.event_log.pending:
            self.event_log.flush()
        now = time.monotonic()
        self._history.append((now, self.outcomes()))
        while len(self._history) > 1 and self._history[1][0] <= now - self.window_s:
            self._history.popleft()
        reasons = self.check()
        if reasons.keys() != self._reported.keys():
            if reasons:
                log.warning("health: degraded: %s", "; ".join(reasons.values()))
            else:
                log.info("health: ok again")
            self._reported = reasons
            self.on_change()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()
