"""Supervisor wallboard: the ``/supervisor/`` page (``web/``) and its ``/supervisor/ws`` feed.

The board is an EventBus sink that keeps the live calls (and those ended in the last
``ENDED_KEEP_S``): per leg its smoothed NEGATIVE over time, per call its escalations and cues.
A page connects to ``/supervisor/ws``, authenticates with the API token (``Authorization:
Bearer`` or a first message ``{"type": "auth", "token"}``: the token is never in a URL),
receives a ``hello`` (``calls``: that state, ``listen``: whether ``POST /calls/{id}/listen``
is served) and then every event of those types as it is published. A page too slow to keep
up is disconnected; it reconnects and starts again from a fresh ``hello``.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from emovoice_daemon.outputs.events import Event
from emovoice_daemon.outputs.notifier import CLOSE_AUTH, add_page, send_until_closed

BOARD_EVENTS = ("call.started", "call.agent", "call.hold", "score", "escalation.raised", "escalation.cleared", "cue", "call.ended")
POINTS_MAX = 600  # per leg; when full, neighbouring points merge (their maximum) and the resolution halves
ENDED_KEEP_S = 30.0
PAGE_QUEUE = 2000
AUTH_TIMEOUT_S = 10.0
PAGE_FILES = {"": ("supervisor.html", "text/html"), "supervisor.js": ("supervisor.js", "application/javascript"),
              "supervisor.css": ("supervisor.css", "text/css")}
PUBLIC_PATHS = {"/supervisor", "/supervisor/", "/supervisor/ws", *(f"/supervisor/{f}" for f in PAGE_FILES if f)}


@dataclass
class _Leg:
    points: list[tuple[float, float]] = field(default_factory=list)  # (leg seconds, smoothed NEGATIVE)
    label: str = ""
    on_hold: bool = False  # the last call.hold said so (music or tones, no speech)
    ended: bool = False

    def add(self, t: float, smoothed: float) -> None:
        self.points.append((t, smoothed))
        if len(self.points) > POINTS_MAX:
            pairs = zip(self.points[0::2], self.points[1::2])
            self.points = [(b[0], max(a[1], b[1])) for a, b in pairs] + self.points[len(self.points) // 2 * 2:]


@dataclass
class _Call:
    call_id: str
    started: float
    meta: dict[str, Any] = field(default_factory=dict)
    legs: dict[str, _Leg] = field(default_factory=dict)
    marks: list[dict[str, Any]] = field(default_factory=list)  # escalations and cues, as in the events
    ended: float | None = None


class SupervisorBoard:
    """The wallboard's state of the calls and the ``/supervisor/ws`` feed of its pages."""

    def __init__(self, api_token: str, listen: bool) -> None:
        self.api_token, self.listen = api_token, listen
        self.calls: dict[str, _Call] = {}
        self.pages: set[asyncio.Queue[Event | None]] = set()
        self.sockets: set[web.WebSocketResponse] = set()

    def sink(self, event: Event) -> None:
        """EventBus sink: update the state and pass the event to every page; never blocks."""
        if event["type"] not in BOARD_EVENTS:
            return
        self._expire(time.time())
        self.apply(event)
        for queue in list(self.pages):
            if queue.qsize() >= PAGE_QUEUE - 1:  # too slow: its last item tells it to reconnect
                self.pages.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

    def apply(self, event: Event) -> None:
        call = self.calls.get(event["call_id"])
        if call is None:
            call = self.calls[event["call_id"]] = _Call(event["call_id"], event["ts"])
        kind, role = event["type"], event["role"]
        if "site" in event:  # followed from JetStream (the hub): which call server
            call.meta["site"] = event["site"]
        if kind == "call.agent":
            call.meta["agent"] = event["agent"]
            return
        if kind == "cue":
            call.marks.append({k: event.get(k) for k in ("type", "role", "cue", "at", "duration_s")})
            return
        leg = call.legs.setdefault(role, _Leg())
        if kind == "call.started":
            call.meta.update(event.get("meta", {}))
            call.started, call.ended, leg.ended = min(call.started, event["ts"]), None, False
        elif kind == "score":
            leg.add(event["window"]["end"], event["negative_smoothed"])
            leg.label = event["label"]
        elif kind == "call.hold":
            leg.on_hold = bool(event["on_hold"])
        elif kind == "escalation.raised":
            call.marks.append({k: event.get(k) for k in ("type", "role", "severity", "reason", "at", "escalation_id")})
        elif kind == "escalation.cleared":
            for mark in self._open_marks(call, role, event.get("reason")):
                mark["cleared_at"] = event["at"]
        elif kind == "call.ended":
            leg.ended = True
            for mark in self._open_marks(call, role, None):
                mark["cleared_at"] = mark["at"] if not leg.points else leg.points[-1][0]
            if all(v.ended for v in call.legs.values()):
                call.ended = event["ts"]

    @staticmethod
    def _open_marks(call: _Call, role: str, reason: str | None) -> list[dict[str, Any]]:
        return [m for m in call.marks if m["type"] == "escalation.raised" and m["role"] == role
                and "cleared_at" not in m and reason in (None, m["reason"])]

    def _expire(self, now: float) -> None:
        for call_id in [c.call_id for c in self.calls.values() if c.ended and now - c.ended > ENDED_KEEP_S]:
            del self.calls[call_id]

    def hello(self) -> Event:
        self._expire(time.time())
        return {"type": "hello", "listen": self.listen, "calls": [asdict(c) for c in self.calls.values()]}

    def authenticate(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.api_token.encode())

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """The ``/supervisor/ws`` handler."""
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        if not await self._auth(request, ws):
            await ws.close(code=CLOSE_AUTH, message=b"authentication failed")
            return ws
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.pages.add(queue)
        self.sockets.add(ws)
        queue.put_nowait(self.hello())
        try:
            await send_until_closed(ws, queue)
        finally:
            self.pages.discard(queue)
            self.sockets.discard(ws)
        return ws

    async def close(self) -> None:
        """Close every page's socket (shutdown); pages reconnect to the next run."""
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon stopping")
                               for ws in list(self.sockets)), return_exceptions=True)

    async def _auth(self, request: web.Request, ws: web.WebSocketResponse) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return self.authenticate(header[7:].strip())
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
            data = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
        except (asyncio.TimeoutError, ValueError):
            return False
        return isinstance(data, dict) and data.get("type") == "auth" and self.authenticate(str(data.get("token", "")))


def add_routes(app: web.Application, board: SupervisorBoard) -> None:
    """The page files and ``/supervisor/ws`` (own auth: listed in ``PUBLIC_PATHS``)."""
    add_page(app, "supervisor", PAGE_FILES)
    app.router.add_get("/supervisor/ws", board.serve)

    async def close(_: web.Application) -> None:
        await board.close()
    app.on_shutdown.append(close)
