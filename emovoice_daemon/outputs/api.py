"""HTTP/WebSocket API (aiohttp): /health, /metrics and the /events stream.

Every route needs ``Authorization: Bearer <token>`` (or ``?token=`` for browsers), except
the paths in ``PUBLIC_PATHS``; tokens are compared in constant time.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import WSCloseCode, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from emovoice_daemon.config import ApiConfig, read_secret
from emovoice_daemon.outputs import feedback, history, metrics, notifier, supervisor
from emovoice_daemon.outputs.events import EventBus

log = logging.getLogger(__name__)



ListenIn = Callable[[str, str, str], Awaitable[str]]  # (call id, supervisor, mode) -> the spied channel
Action = Callable[[str], Awaitable[dict[str, Any]]]  # (argument from the path, or "") -> the JSON answer
LISTEN_MODES = ("listen", "whisper")


@dataclass
class ApiContext:
    """What the API serves: the token, the event bus, the health report and the optional routes' owners."""
    token: str
    metrics_public: bool
    bus: EventBus
    health: Callable[[], dict[str, Any]]
    history: history.CallHistory | None = None
    notifier: notifier.AgentNotifier | None = None
    listen_in: ListenIn | None = None
    supervisor: supervisor.SupervisorBoard | None = None
    feedback: feedback.FeedbackDesk | None = None
    reload_model: Action | None = None  # POST /model/reload: switch to the current learnt model version
    forget_call: Action | None = None  # DELETE /learning/calls/{id}: the feature store forgets a call


class OneLineBadRequests(logging.Filter):
    """aiohttp logs a malformed request (oversized header or URL, not HTTP) as an ERROR with a traceback;
    anyone can send one, so it becomes one WARNING line naming the peer and what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "%s: bad HTTP request: %s", (record.getMessage(), " ".join(str(exc).split())[:200])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


SERVER_LOG = logging.getLogger(f"{__name__}.server")  # the logger the API's aiohttp server reports errors to
SERVER_LOG.addFilter(OneLineBadRequests())

CONTEXT_KEY: web.AppKey[ApiContext] = web.AppKey("context")
SOCKETS_KEY: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
WS_CLOSE_TIMEOUT_S = 2.0  # how long a closing client may take to answer the close frame
PUBLIC_PATHS = {"/", "/health", *notifier.PUBLIC_PATHS, *supervisor.PUBLIC_PATHS}  # the pages' sockets check tokens
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_token(request: web.Request) -> str:
    """The bearer token of a request (header first, then the ``token`` query parameter)."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):].strip()
    return request.query.get("token", "")


def token_ok(request: web.Request, token: str) -> bool:
    return hmac.compare_digest(request_token(request).encode(), token.encode())


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT_KEY]
    public = (request.path in PUBLIC_PATHS or (request.path == "/metrics" and ctx.metrics_public)
              or (ctx.feedback is not None and feedback.OWN_AUTH.fullmatch(request.path) is not None))
    if not public and not token_ok(request, ctx.token):
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


INDEX = """EmoVoice daemon API

/agent/#agent=ID&token=AGENT_TOKEN   the agent page (a browser; no API token needed)
/supervisor/#token=API_TOKEN          the supervisors' wallboard (a browser)
/health                               daemon health (JSON; no token needed)
/events  /calls  /calls/{id}  /metrics   need the API token: Authorization: Bearer TOKEN (or ?token=)
POST /escalations/{id}/feedback  POST /calls/{id}/feedback   verdicts (API token, or an agent's own token)
supervisor view: emovoice-top --url http://THIS-HOST:PORT --token-file /etc/emovoice/api-token
"""


async def index(request: web.Request) -> web.Response:
    """``/``: what is served here (someone opened the API address in a browser)."""
    return web.Response(text=INDEX)


async def health(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTEXT_KEY].health())


async def metrics_text(request: web.Request) -> web.Response:
    body = generate_latest(metrics.EXPOSED)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def events_ws(request: web.Request) -> web.WebSocketResponse:
    """Stream every event as a JSON text message; ``?call_id=`` narrows it to one call."""
    ws = web.WebSocketResponse(heartbeat=20, timeout=WS_CLOSE_TIMEOUT_S)
    await ws.prepare(request)
    sockets = request.app[SOCKETS_KEY]
    sockets.add(ws)
    forward = asyncio.create_task(_forward(request.app[CONTEXT_KEY].bus, ws, request.query.get("call_id")))
    try:
        async for _ in ws:  # clients send nothing; reading is how a close is noticed
            pass
    finally:
        sockets.discard(ws)
        forward.cancel()
        await asyncio.gather(forward, return_exceptions=True)
    return ws


async def _forward(bus: EventBus, ws: web.WebSocketResponse, call_id: str | None) -> None:
    async for event in bus.subscribe():
        if call_id is None or event["call_id"] == call_id:
            await ws.send_str(json.dumps(event))


async def close_websockets(app: web.Application) -> None:
    """On shutdown: close the open /events sockets (1001 going away) so a drain never waits for clients."""
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon stopping")
                           for ws in set(app[SOCKETS_KEY])))


async def listen_in(request: web.Request) -> web.Response:
    """``POST /calls/{call_id}/listen`` with ``{"supervisor", "mode": "listen" | "whisper"}``: ring the
    supervisor's phone and connect it to the call (AMI Originate of ChanSpy)."""
    try:
        data = await request.json()
        supervisor, mode = str(data["supervisor"]), str(data.get("mode", "listen"))
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected JSON {"supervisor": "...", "mode": "listen|whisper"}'}, status=400)
    if mode not in LISTEN_MODES:
        return web.json_response({"error": f"mode must be one of {', '.join(LISTEN_MODES)}"}, status=400)
    call_id = request.match_info["call_id"]
    try:
        channel = await request.app[CONTEXT_KEY].listen_in(call_id, supervisor, mode)
    except KeyError as exc:
        return web.json_response({"error": f"unknown supervisor or call: {exc.args[0]}"}, status=404)
    except RuntimeError as exc:
        return web.json_response({"error": str(exc)}, status=502)
    return web.json_response({"call_id": call_id, "supervisor": supervisor, "mode": mode, "channel": channel})


def action_route(action: Action, param: str = "") -> Handler:
    """A route running ``action`` (its ValueError: 409 with the reason, KeyError: 404)."""

    async def handler(request: web.Request) -> web.Response:
        try:
            return web.json_response(await action(request.match_info.get(param, "")))
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        except ValueError as exc:
            log.warning("%s %s: %s", request.method, request.path, exc)
            return web.json_response({"error": str(exc)}, status=409)
    return handler


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[auth_middleware])
    app[CONTEXT_KEY] = ctx
    app[SOCKETS_KEY] = set()
    app.on_shutdown.append(close_websockets)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/events", events_ws)
    if ctx.history is not None:
        history.add_routes(app, ctx.history)
    if ctx.notifier is not None:
        notifier.add_routes(app, ctx.notifier)
    if ctx.supervisor is not None:
        supervisor.add_routes(app, ctx.supervisor)
    if ctx.listen_in is not None:
        app.router.add_post("/calls/{call_id}/listen", listen_in)
    if ctx.feedback is not None:
        feedback.add_routes(app, ctx.feedback, request_token)
    if ctx.reload_model is not None:
        app.router.add_post("/model/reload", action_route(ctx.reload_model))
    if ctx.forget_call is not None:
        app.router.add_delete("/learning/calls/{call_id}", action_route(ctx.forget_call, "call_id"))
    return app


def api_token(cfg: ApiConfig) -> str:
    """The configured bearer token (``EMOVOICE_API_TOKEN``, ``token_file``, ``token``), or one made up for this run."""
    token = read_secret(cfg.token, cfg.token_file, "EMOVOICE_API_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        log.warning("no api.token configured: generated one for this run: %s", token)
    return token


async def start_api(cfg: ApiConfig, ctx: ApiContext) -> tuple[web.AppRunner, str]:
    """Serve the API on ``cfg.host:port`` (TLS when ``tls_cert`` is set); returns the runner and host:port."""
    runner = web.AppRunner(build_app(ctx), access_log=None, logger=SERVER_LOG)
    await runner.setup()
    ssl_ctx = None
    if cfg.tls_cert:
        import ssl
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
    site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=ssl_ctx)
    await site.start()
    host, port = site._server.sockets[0].getsockname()[:2]
    log.info("api listening on %s://%s:%s", "https" if ssl_ctx else "http", host, port)
    return runner, f"{host}:{port}"
