"""Call history in SQLite: one row per leg from ``call.started`` to ``call.ended`` and its summary.

Served by the API as ``GET /calls`` (newest first; ``live``, ``agent``, ``limit``, ``offset``)
and ``GET /calls/{call_id}`` (every leg with its summary, and the verdicts given on it: ``feedback`` events). Holds scores, never audio. The bus
queues events for a writer task (SQLite is off the event loop); a request first waits for the events
published before it to be written, so a client that saw ``call.ended`` on ``/events`` finds the call ended.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from emovoice_daemon.outputs.events import Event

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS legs (
    call_id TEXT NOT NULL,
    role TEXT NOT NULL,
    source TEXT NOT NULL,
    meta TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    reason TEXT,
    summary TEXT,
    PRIMARY KEY (call_id, role)
);
CREATE INDEX IF NOT EXISTS legs_started ON legs (started);
CREATE TABLE IF NOT EXISTS applied (msg_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    call_id TEXT NOT NULL,
    role TEXT NOT NULL,
    ts REAL NOT NULL,
    verdict TEXT NOT NULL,
    given_by TEXT NOT NULL,
    escalation_id TEXT
);
CREATE INDEX IF NOT EXISTS verdicts_call ON verdicts (call_id);
"""
MAX_LIMIT = 500
EARLY_AGENTS_KEPT = 1000


class CallHistory:
    """SQLite store of call legs; ``sink`` is an EventBus sink, ``run()`` writes what it queued."""

    def __init__(self, path: str, retention_days: float = 0.0, keep_live: bool = False) -> None:
        """``keep_live``: legs a previous run left live stay live (a site-wide history: other servers'
        calls go on while it restarts); otherwise they are closed as ``lost``."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._early_agents: dict[str, str] = {}  # call.agent before the call's call.started: call id -> agent
        self._queued = self._written = 0  # events the sink queued, and of those the ones written
        self._progress = asyncio.Condition()
        with self._lock, self._db:
            self._db.executescript(SCHEMA)
            if not keep_live:  # legs a previous run never ended (it crashed or was killed) are not live any more
                self._db.execute("UPDATE legs SET ended = started, reason = 'lost' WHERE ended IS NULL")
            if retention_days > 0:
                self._db.execute("DELETE FROM legs WHERE started < ?", (time.time() - retention_days * 86400,))
                self._db.execute("DELETE FROM applied WHERE at < ?", (time.time() - retention_days * 86400,))
                self._db.execute("DELETE FROM verdicts WHERE ts < ?", (time.time() - retention_days * 86400,))

    def sink(self, event: Event) -> None:
        """EventBus sink: queue call.started/call.agent/call.ended/feedback (never blocks, never drops)."""
        if event["type"] in ("call.started", "call.agent", "call.ended", "feedback"):
            self._queue.put_nowait(event)
            self._queued += 1

    async def run(self) -> None:
        """Write queued events until cancelled; a bad event is logged and skipped."""
        while True:
            await self.write(await self._queue.get())
            await self._wrote_one()

    async def caught_up(self) -> None:
        """Return once every event the sink queued before this call is written (or skipped as bad)."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def _wrote_one(self) -> None:
        async with self._progress:
            self._written += 1
            self._progress.notify_all()

    async def write(self, event: Event, msg_id: str | None = None) -> None:
        """``record`` off the event loop; a bad event is logged and skipped."""
        try:
            await asyncio.to_thread(self.record, event, msg_id)
        except (sqlite3.Error, KeyError, TypeError, ValueError):
            log.exception("call history: cannot record %s of %s", event.get("type"), event.get("call_id"))

    async def drain(self) -> None:
        """Write everything queued so far (used at shutdown and by tests)."""
        while not self._queue.empty():
            await asyncio.to_thread(self.record, self._queue.get_nowait())
            await self._wrote_one()

    def record(self, event: Event, msg_id: str | None = None) -> bool:
        """Apply one event; with ``msg_id``, an id applied before (a redelivery) is skipped: returns False."""
        with self._lock, self._db:
            if msg_id is not None and not self._db.execute(
                    "INSERT OR IGNORE INTO applied (msg_id, at) VALUES (?, ?)", (msg_id, time.time())).rowcount:
                return False
            if event["type"] == "call.started":
                meta = event.get("meta", {})
                if event["call_id"] in self._early_agents:
                    meta = {**meta, "agent": self._early_agents[event["call_id"]]}
                self._db.execute(
                    "INSERT OR REPLACE INTO legs (call_id, role, source, meta, started) VALUES (?, ?, ?, ?, ?)",
                    (event["call_id"], event["role"], event["source"], json.dumps(meta), event["ts"]))
            elif event["type"] == "call.agent":
                self._agent(event["call_id"], event["agent"])
            elif event["type"] == "feedback":
                self._db.execute("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                                 (event["call_id"], event["role"], event["ts"], event["verdict"], event["by"],
                                  event.get("escalation_id")))
            elif event["type"] == "call.ended":
                self._db.execute(
                    "UPDATE legs SET ended = ?, reason = ?, summary = ? WHERE call_id = ? AND role = ?",
                    (event["summary"].get("last_seen", event["ts"]), event["reason"], json.dumps(event["summary"]),
                     event["call_id"], event["role"]))
        return True

    def _agent(self, call_id: str, agent: str) -> None:
        """The call's agent (meta.agent of its legs); remembered for legs that start later."""
        self._db.execute("UPDATE legs SET meta = json_set(meta, '$.agent', ?) WHERE call_id = ?", (agent, call_id))
        self._early_agents[call_id] = agent
        while len(self._early_agents) > EARLY_AGENTS_KEPT:
            del self._early_agents[next(iter(self._early_agents))]

    def list_calls(self, limit: int = 50, offset: int = 0, live: bool | None = None,
                   agent: str | None = None) -> list[dict[str, Any]]:
        """Calls newest first, each with its legs' overview (no timelines)."""
        where, args = [], []
        if live is not None:
            where.append("ended IS NULL" if live else "ended IS NOT NULL")
        if agent is not None:
            where.append("json_extract(meta, '$.agent') = ?")
            args.append(agent)
        sql = ("SELECT call_id FROM legs" + (" WHERE " + " AND ".join(where) if where else "")
               + " GROUP BY call_id ORDER BY MIN(started) DESC, MIN(rowid) DESC LIMIT ? OFFSET ?")
        with self._lock:
            ids = [r["call_id"] for r in self._db.execute(sql, (*args, limit, offset))]
        calls = [self.get_call(call_id, timeline=False) for call_id in ids]
        return [c for c in calls if c is not None]

    def get_call(self, call_id: str, timeline: bool = True) -> dict[str, Any] | None:
        """One call with every leg (and its summary), or None."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM legs WHERE call_id = ? ORDER BY role", (call_id,)).fetchall()
            verdicts = [{"role": v["role"], "ts": v["ts"], "verdict": v["verdict"], "by": v["given_by"],
                         "escalation_id": v["escalation_id"]} for v in self._db.execute(
                "SELECT * FROM verdicts WHERE call_id = ? ORDER BY ts", (call_id,))]
        if not rows:
            return None
        legs = [_leg(row, timeline) for row in rows]
        meta: dict[str, Any] = {}
        for leg in legs:
            meta.update(leg["meta"])
        ended = [leg["ended"] for leg in legs]
        return {"call_id": call_id, "source": legs[0]["source"], "meta": meta,
                "started": min(leg["started"] for leg in legs),
                "ended": None if None in ended else max(ended), "live": None in ended,
                "peak_negative": max((leg["summary"] or {}).get("peak_negative", 0.0) for leg in legs),
                "escalations": sum((leg["summary"] or {}).get("escalations", 0) for leg in legs),
                "verdicts": verdicts, "legs": legs}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _leg(row: sqlite3.Row, timeline: bool) -> dict[str, Any]:
    summary = json.loads(row["summary"]) if row["summary"] else None
    if summary is not None and not timeline:
        summary.pop("timeline", None)
    return {"role": row["role"], "source": row["source"], "meta": json.loads(row["meta"]),
            "started": row["started"], "ended": row["ended"], "reason": row["reason"], "summary": summary}


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be an integer, got {raw!r}"}),
                                 content_type="application/json") from None
    if not 0 <= value <= maximum:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be between 0 and {maximum}"}),
                                 content_type="application/json")
    return value


def add_routes(app: web.Application, history: CallHistory) -> None:
    """``GET /calls`` and ``GET /calls/{call_id}`` (auth is the API's middleware)."""

    async def list_handler(request: web.Request) -> web.Response:
        live = request.query.get("live")
        await history.caught_up()
        calls = await asyncio.to_thread(
            history.list_calls, _int_param(request, "limit", 50, MAX_LIMIT), _int_param(request, "offset", 0, 10**9),
            None if live is None else live in ("1", "true", "yes"), request.query.get("agent"))
        return web.json_response({"calls": calls})

    async def get_handler(request: web.Request) -> web.Response:
        await history.caught_up()
        call = await asyncio.to_thread(history.get_call, request.match_info["call_id"])
        if call is None:
            return web.json_response({"error": f"no call {request.match_info['call_id']!r}"}, status=404)
        return web.json_response(call)

    app.router.add_get("/calls", list_handler)
    app.router.add_get("/calls/{call_id}", get_handler)
