"""Event schema (version 2) and the in-process bus that fans events out to the log and subscribers.

See docs/architecture.md for every event type and its fields.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, AsyncIterator, Callable

from emovoice_daemon.outputs import metrics

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
EVENT_TYPES = ("call.started", "call.agent", "call.dtmf", "call.hold", "score", "escalation.raised",
               "escalation.cleared", "cue", "call.ended", "feedback")

Event = dict[str, Any]
Sink = Callable[[Event], None]


class EventBus:
    """Numbers events, writes them to sinks (the JSONL log) and fans them out to subscribers.

    Publishing never blocks: a subscriber whose queue is full loses its oldest event and the
    drop is counted, so one slow WebSocket client cannot stall scoring for every call.
    """

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self.boot = int(time.time() * 1000)  # this daemon run; (boot, seq) names an event across restarts
        self._seq = itertools.count(1)
        self._sinks: list[Sink] = []
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def make_event(self, type_: str, call_id: str, role: str, **fields: Any) -> Event:
        """A schema-versioned event with this run's boot id and a daemon-wide sequence number."""
        assert type_ in EVENT_TYPES, type_
        return {"v": SCHEMA_VERSION, "type": type_, "ts": round(time.time(), 3), "boot": self.boot,
                "seq": next(self._seq), "call_id": call_id, "role": role, **fields}

    def forward(self, event: Event) -> None:
        """Publish an event made by another process's bus (a worker), numbered in this bus's run and sequence."""
        event["boot"], event["seq"] = self.boot, next(self._seq)
        self.publish(event)

    def publish(self, event: Event) -> None:
        metrics.EVENTS_TOTAL.labels(event["type"]).inc()
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a failing sink must not lose the event for the others
                log.exception("event sink %r failed", sink)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                metrics.EVENTS_DROPPED.inc()
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        """Yield every event published from now on, until the consumer stops iterating."""
        queue: asyncio.Queue[Event] = asyncio.Queue(self.queue_size)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)


journal_log = logging.getLogger("emovoice_daemon.journal")


def journal(event: Event) -> None:
    """EventBus sink: one INFO line per call start and end and per escalation (what an operator tails)."""
    kind, leg = event["type"], f"call {event['call_id']} {event['role']}"
    if kind == "call.started":
        journal_log.info("%s started (%s)", leg, event.get("source", ""))
    elif kind == "call.agent":
        journal_log.info("call %s answered by agent %s", event["call_id"], event.get("agent"))
    elif kind == "call.ended":
        s = event.get("summary", {})
        journal_log.info("%s ended (%s): %.0f s, %s windows scored, peak NEGATIVE %s, %s escalations", leg,
                         event.get("reason", ""), s.get("duration_s", 0), s.get("windows_scored", 0),
                         s.get("peak_negative", "-"), s.get("escalations", 0))
    elif kind == "escalation.raised":
        journal_log.info("%s escalation raised: %s at %s s, %s (NEGATIVE smoothed %s)", leg, event.get("severity"),
                         event.get("at"), event.get("reason"), event.get("negative_smoothed"))
    elif kind == "feedback":
        journal_log.info("%s verdict: %s%s by %s", leg, event.get("verdict"),
                         f" (escalation {event['escalation_id']})" if event.get("escalation_id") else "", event.get("by"))
    elif kind == "escalation.cleared":
        journal_log.info("%s escalation cleared at %s s after %s s", leg, event.get("at"), event.get("duration_s"))
