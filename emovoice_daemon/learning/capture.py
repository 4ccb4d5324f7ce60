"""From a verdict to labelled windows: the label rule, and the bus sink that writes them to the feature store.

The label rule (docs/operations.md#learning-from-verdicts), applied to the windows still held in memory for the
verdict's leg (``RecentWindows``):

* an escalation **confirmed**: its windows are *upset*; **dismissed**: its windows are *calm*. An escalation's
  windows are those ending from ``lead_s`` before it was raised until it cleared (or until the verdict, if it had
  not);
* a call marked **upset** (the caller was upset, whether or not anything was raised): the windows ending in the
  last ``upset_last_s`` of the leg are *upset*;
* a call marked **calm**: all its windows held are *calm*.
"""
from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from emovoice_daemon.config import LearningConfig
from emovoice_daemon.learning.recent import RecentWindows, Window
from emovoice_daemon.learning.store import FeatureStore, Row
from emovoice_daemon.outputs.events import Event

log = logging.getLogger(__name__)

UPSET = {"confirmed": True, "dismissed": False, "upset": True, "calm": False}


def label(event: Event, windows: list[Window], cfg: LearningConfig) -> list[tuple[Window, bool]]:
    """The windows a ``feedback`` event concerns, each with its label (True: upset)."""
    verdict = event["verdict"]
    if verdict in ("confirmed", "dismissed"):
        start = float(event["raised_at"]) - cfg.lead_s
        cleared = event.get("cleared_at")
        end = math.inf if cleared is None else float(cleared)
        chosen = [w for w in windows if start <= w.end_s <= end]
    elif verdict == "upset":
        last = windows[-1].end_s if windows else 0.0
        chosen = [w for w in windows if w.end_s > last - cfg.upset_last_s]
    else:
        chosen = windows
    return [(w, UPSET[verdict]) for w in chosen]


class VerdictRecorder:
    """EventBus sink: each ``feedback`` event's labelled windows go to the store (written off the event loop). The
    store file is created with the first verdict: a daemon that never gets one keeps nothing."""

    def __init__(self, cfg: LearningConfig, recent: RecentWindows) -> None:
        self.cfg, self.recent = cfg, recent
        self._store: FeatureStore | None = None
        self._queue: asyncio.Queue[list[Row]] = asyncio.Queue()

    @property
    def store(self) -> FeatureStore:
        """The feature store, opened (and purged past the retention) on first use."""
        if self._store is None:
            self._store = FeatureStore(self.cfg.store_path, self.cfg.retention_days)
        return self._store

    def delete_call(self, call_id: str) -> int:
        """Forget every kept window of a call (nothing to do before the store exists)."""
        if self._store is None and not Path(self.cfg.store_path).expanduser().exists():
            return 0
        return self.store.delete_call(call_id)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def sink(self, event: Event) -> None:
        if event["type"] != "feedback":
            return
        labelled = label(event, self.recent.windows(event["call_id"], event["role"]), self.cfg)
        subject = event.get("escalation_id") or "call"
        self._queue.put_nowait([Row(event["call_id"], event["role"], subject, event["verdict"], event["by"],
                                    event["ts"], w.start_s, w.end_s, upset, w.features) for w, upset in labelled])

    async def run(self) -> None:
        """Write queued verdicts until cancelled; purge past the retention once a day."""
        loop = asyncio.get_running_loop()
        if Path(self.cfg.store_path).expanduser().exists():
            await asyncio.to_thread(lambda: self.store)  # opening purges past the retention
        next_purge = loop.time() + 86400
        while True:
            try:
                rows = await asyncio.wait_for(self._queue.get(), max(1.0, next_purge - loop.time()))
            except asyncio.TimeoutError:
                if self._store is not None:
                    await asyncio.to_thread(self._store.purge)
                next_purge = loop.time() + 86400
                continue
            await self.write(rows)

    async def write(self, rows: list[Row]) -> None:
        try:
            n = await asyncio.to_thread(self.store.record, rows)
        except Exception as exc:  # a full disk must not stop the daemon: the verdict event is already out
            log.error("feature store %s: cannot keep a verdict's windows: %s", self.cfg.store_path, exc)
            return
        if rows:
            log.info("feature store: kept %d windows of call %s (%s)", n, rows[0].call_id, rows[0].verdict)

    async def drain(self) -> None:
        while not self._queue.empty():
            await self.write(self._queue.get_nowait())
