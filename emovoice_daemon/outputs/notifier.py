"""Agent-side notifier: each agent's WebSocket gets only its own calls' escalation prompts.

An agent connects to ``/agent/ws`` and authenticates either with ``Authorization: Bearer
<token>`` and ``?agent=<id>``, or (browsers) by sending ``{"type": "auth", "agent", "token"}``
as its first message. A token is the agent's own (``notifier.agents``/``agents_file``) or
the API token. A call belongs to an agent through ``meta.agent`` of ``call.started`` or
through ``POST /agent/bind`` (``{"call_id", "agent"}``, API token), which the dialplan or
CTI can call before or during the call, or ``call.agent`` (the AMI client saw a queue member answer).
An agent bound to a call already started gets its ``call.started`` events and active escalations
then. The agent receives ``call.started``,
``escalation.raised`` (plus ``phrase``, the suggested wording for its severity),
``escalation.cleared`` and ``call.ended`` events of those calls; on connecting, a ``hello``
lists the escalations already active. The page itself is served from ``/agent/``.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiohttp import WSCloseCode, WSMsgType, web

from emovoice_daemon.config import ConfigError, NotifierConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import Event

log = logging.getLogger(__name__)

AGENT_EVENTS = ("call.started", "call.hold", "escalation.raised", "escalation.cleared", "call.ended")
BIND_EVENT = "call.agent"
AUTH_TIMEOUT_S = 10.0
AGENT_QUEUE = 256
UNBOUND_TTL_S = 12 * 3600
WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = {"": ("agent.html", "text/html"), "agent.js": ("agent.js", "application/javascript"),
              "agent.css": ("agent.css", "text/css")}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
CLOSE_AUTH = 4401


def load_agent_tokens(cfg: NotifierConfig) -> dict[str, str]:
    """agent id -> token from ``agents`` and ``agents_file`` (the file wins)."""
    tokens = dict(cfg.agents)
    if cfg.agents_file:
        try:
            data = yaml.safe_load(Path(cfg.agents_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError([f"{cfg.agents_file}:0: notifier.agents_file: cannot read: {exc}"]) from None
        if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
            raise ConfigError([f"{cfg.agents_file}:0: notifier.agents_file: expected a mapping agent id -> token"])
        tokens.update({str(k): v for k, v in data.items()})
    return tokens


@dataclass
class _Call:
    agent: str | None = None
    legs: dict[str, Event] = field(default_factory=dict)  # role -> call.started event
    active: dict[str, Event] = field(default_factory=dict)  # role -> escalation.raised event
    bound_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        """``meta.name`` of the call's ``call.started`` (shown instead of the id), else ''."""
        return next((str(e["meta"]["name"]) for e in self.legs.values() if e.get("meta", {}).get("name")), "")


class AgentNotifier:
    """Routes escalation events to the WebSocket connections of the call's agent."""

    def __init__(self, cfg: NotifierConfig, api_token: str) -> None:
        self.cfg = cfg
        self.api_token = api_token
        self.tokens = load_agent_tokens(cfg)
        self.calls: dict[str, _Call] = {}
        self.connections: dict[str, set[asyncio.Queue[Event | None]]] = {}
        self.sockets: set[web.WebSocketResponse] = set()

    def bind(self, call_id: str, agent: str) -> None:
        """Make ``agent`` the agent of ``call_id`` (before or during the call: it gets what it missed)."""
        self._prune()
        call = self.calls.setdefault(call_id, _Call())
        if call.agent == agent:
            return
        call.agent = agent
        for event in [*call.legs.values(), *call.active.values()]:
            self._send(agent, event)

    def sink(self, event: Event) -> None:
        """EventBus sink: track calls and forward their prompts; never blocks."""
        if event["type"] == BIND_EVENT and isinstance(event.get("agent"), str) and event["agent"]:
            self.bind(event["call_id"], event["agent"])
        if event["type"] not in AGENT_EVENTS:
            return
        call = self.calls.setdefault(event["call_id"], _Call())
        kind, role = event["type"], event["role"]
        if kind == "call.started":
            call.legs[role] = event
            agent = event.get("meta", {}).get("agent")
            if isinstance(agent, str) and agent and call.agent is None:
                call.agent = agent
        elif role not in self.cfg.roles:
            if kind == "call.ended":
                self._leg_ended(event["call_id"], call, role)
            return
        elif kind == "escalation.raised":
            event = {**event, "phrase": self.cfg.phrases.get(event["severity"], "")}
            call.active[role] = event
        elif kind == "escalation.cleared":
            call.active.pop(role, None)
        if call.agent is not None:
            self._send(call.agent, event)
        if kind == "call.ended":
            self._leg_ended(event["call_id"], call, role)

    def _leg_ended(self, call_id: str, call: _Call, role: str) -> None:
        call.legs.pop(role, None)
        call.active.pop(role, None)
        if not call.legs:
            del self.calls[call_id]

    def _prune(self) -> None:
        """Forget bindings of calls that never started."""
        old = time.monotonic() - UNBOUND_TTL_S
        for call_id in [c for c, call in self.calls.items() if not call.legs and call.bound_at < old]:
            del self.calls[call_id]

    def _send(self, agent: str, event: Event) -> None:
        for queue in self.connections.get(agent, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def hello(self, agent: str) -> Event:
        active = [e for call in self.calls.values() if call.agent == agent for e in call.active.values()]
        live = sorted(c for c, call in self.calls.items() if call.agent == agent and call.legs)
        names = {c: name for c in live if (name := self.calls[c].name)}
        return {"type": "hello", "agent": agent, "calls": live, "names": names, "active": active}

    def authenticate(self, agent: str, token: str) -> bool:
        """Is ``token`` the agent's own token or the API token? (constant time)"""
        expected = self.tokens.get(agent, "")
        own = bool(expected) and hmac.compare_digest(token.encode(), expected.encode())
        return own | hmac.compare_digest(token.encode(), self.api_token.encode())

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """The ``/agent/ws`` handler."""
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        agent = await self._auth(request, ws)
        if agent is None:
            await ws.close(code=CLOSE_AUTH, message=b"authentication failed")
            return ws
        queue: asyncio.Queue[Event | None] = asyncio.Queue(AGENT_QUEUE)
        self.connections.setdefault(agent, set()).add(queue)
        self.sockets.add(ws)
        metrics.AGENT_CONNECTIONS.inc()
        queue.put_nowait(self.hello(agent))
        try:
            await send_until_closed(ws, queue)
        finally:
            self.sockets.discard(ws)
            metrics.AGENT_CONNECTIONS.dec()
            self.connections[agent].discard(queue)
            if not self.connections[agent]:
                del self.connections[agent]
        return ws

    async def close(self) -> None:
        """Close every agent socket (daemon shutdown); pages reconnect to the next daemon."""
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon stopping")
                               for ws in list(self.sockets)), return_exceptions=True)

    async def _auth(self, request: web.Request, ws: web.WebSocketResponse) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            agent = request.query.get("agent", "")
            return agent if agent and self.authenticate(agent, header[7:].strip()) else None
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            return None
        if msg.type != WSMsgType.TEXT:
            return None
        try:
            data = json.loads(msg.data)
            agent, token = str(data["agent"]), str(data["token"])
        except (ValueError, KeyError, TypeError):
            return None
        if data.get("type") != "auth" or not agent or not self.authenticate(agent, token):
            return None
        return agent

    async def bind_handler(self, request: web.Request) -> web.Response:
        """``POST /agent/bind`` with ``{"call_id", "agent"}`` (API token, checked by the API)."""
        try:
            data = await request.json()
            call_id, agent = data["call_id"], data["agent"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected JSON {"call_id": "...", "agent": "..."}'}, status=400)
        if not (isinstance(call_id, str) and isinstance(agent, str) and call_id and agent):
            return web.json_response({"error": "call_id and agent must be non-empty strings"}, status=400)
        self.bind(call_id, agent)
        return web.json_response({"call_id": call_id, "agent": agent})


def add_page(app: web.Application, name: str, files: dict[str, tuple[str, str]]) -> None:
    """Serve a static page from ``web/`` at ``/<name>/`` (``files``: ``{"" or file name: (name in web/,
    content type)}``; no data in it: it fetches nothing until its user authenticates), and redirect
    ``/<name>`` there (the browser keeps the ``#...`` fragment with the credentials)."""

    async def page(request: web.Request) -> web.Response:
        file, content_type = files[request.path.rsplit("/", 1)[1]]
        return web.Response(body=(WEB_DIR / file).read_bytes(), content_type=content_type, headers=PAGE_HEADERS)

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"/{name}/{'?' + request.query_string if request.query_string else ''}")

    app.router.add_get(f"/{name}", to_page)
    for file in files:
        app.router.add_get(f"/{name}/{file}", page)


async def send_until_closed(ws: web.WebSocketResponse, queue: asyncio.Queue[Event | None]) -> None:
    """Send each queued event as JSON until the peer closes the socket (it sends nothing more: reading
    is how its close is noticed); a ``None`` in the queue closes it, asking the peer to reconnect."""
    reader = asyncio.create_task(_read_until_closed(ws))
    try:
        while not reader.done():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            event = getter.result()
            if event is None:
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow: reconnect")
                break
            await ws.send_str(json.dumps(event))
    except (ConnectionError, RuntimeError):
        pass  # the peer went away mid-send
    finally:
        reader.cancel()


async def _read_until_closed(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


PUBLIC_PATHS = {"/agent", "/agent/", "/agent/ws", *(f"/agent/{f}" for f in PAGE_FILES if f)}


def add_routes(app: web.Application, notifier: AgentNotifier) -> None:
    """``/agent/`` page files, ``/agent/ws`` (own auth: list them in the API's public paths), ``/agent/bind``."""
    add_page(app, "agent", PAGE_FILES)
    app.router.add_get("/agent/ws", notifier.serve)
    app.router.add_post("/agent/bind", notifier.bind_handler)
