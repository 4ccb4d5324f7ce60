"""Verdicts: agents and supervisors say whether an escalation was right and whether a caller was upset.

``POST /escalations/{id}/feedback`` ``{"verdict": "confirmed" | "dismissed"}`` and ``POST /calls/{id}/feedback``
``{"verdict": "upset" | "calm"}``. A supervisor sends the API token; an agent sends its own token (or the API
token) with ``"agent": ID`` in the body, and only for a call bound to that agent (the notifier's binding:
``meta.agent``, ``call.agent``, ``POST /agent/bind``). A live call, or one ended within ``learning.grace_s``,
takes verdicts. Each verdict is published as a ``feedback`` event (the history keeps it; with
``learning.keep_features`` the learning side keeps the features of the windows it concerns). Escalations are
named by the ``escalation_id`` their ``escalation.raised``/``escalation.cleared`` events carry.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from emovoice_daemon.outputs.events import Event, EventBus

log = logging.getLogger(__name__)

ESCALATION_VERDICTS = ("confirmed", "dismissed")
CALL_VERDICTS = ("upset", "calm")
CALLER_ROLES = ("customer", "mixed")  # a call verdict concerns the caller's leg
OWN_AUTH = re.compile(r"/(escalations|calls)/[^/]+/feedback")  # the handler checks the token (agents may post)
MAX_BODY = 4096

AgentOf = Callable[[str], "str | None"]  # call id -> its agent as the notifier knows it
Authenticate = Callable[[str, str], bool]  # (agent, token) -> its own token (or the API token)?


@dataclass
class _Escalation:
    call_id: str
    role: str
    raised_at: float
    cleared_at: float | None = None


@dataclass
class _Call:
    agent: str | None = None
    roles: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)
    ended_at: float | None = None  # monotonic time its last leg ended
    escalations: list[str] = field(default_factory=list)


class Refused(Exception):
    """A verdict that is not accepted: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class FeedbackDesk:
    """Knows the live and recent calls and their escalations (EventBus sink); turns verdicts into events."""

    def __init__(self, bus: EventBus, api_token: str, grace_s: float, agent_of: AgentOf | None = None,
                 authenticate: Authenticate | None = None) -> None:
        self.bus, self.api_token, self.grace_s = bus, api_token, grace_s
        self.agent_of, self.authenticate = agent_of, authenticate
        self.calls: dict[str, _Call] = {}
        self.escalations: dict[str, _Escalation] = {}

    def sink(self, event: Event) -> None:
        """Track calls, their agents and escalations; forget calls ended more than ``grace_s`` ago."""
        kind, call_id, role = event["type"], event["call_id"], event["role"]
        if kind == "call.started":
            call = self.calls.setdefault(call_id, _Call())
            call.roles.add(role)
            call.live.add(role)
            call.ended_at = None
            call.agent = call.agent or event.get("meta", {}).get("agent") or None
        call = self.calls.get(call_id)
        if call is None:
            return
        if self.agent_of is not None and (bound := self.agent_of(call_id)):
            call.agent = bound
        if kind == "call.agent" and event.get("agent"):
            call.agent = str(event["agent"])
        elif kind == "escalation.raised" and event.get("escalation_id"):
            esc_id = event["escalation_id"]
            if esc_id not in self.escalations:
                self.escalations[esc_id] = _Escalation(call_id, role, float(event["at"]))
                call.escalations.append(esc_id)
        elif kind == "escalation.cleared" and event.get("escalation_id") in self.escalations:
            self.escalations[event["escalation_id"]].cleared_at = float(event["at"])
        elif kind == "call.ended":
            call.live.discard(role)
            if not call.live:
                call.ended_at = time.monotonic()
                self._prune()

    def _prune(self) -> None:
        old = time.monotonic() - self.grace_s
        for call_id in [c for c, call in self.calls.items() if call.ended_at is not None and call.ended_at < old]:
            for esc_id in self.calls.pop(call_id).escalations:
                self.escalations.pop(esc_id, None)

    def _call(self, call_id: str) -> _Call:
        self._prune()
        call = self.calls.get(call_id)
        if call is None:
            raise Refused(404, f"no live or recent call {call_id!r} (verdicts are taken until "
                               f"{self.grace_s:.0f} s after a call ends)")
        return call

    def is_supervisor(self, token: str) -> bool:
        """Whether ``token`` is the API token."""
        return hmac.compare_digest(token.encode(), self.api_token.encode())

    def who(self, token: str, agent: Any, call: _Call) -> str:
        """``supervisor`` (API token, no agent named) or ``agent ID`` (its own token, its own call)."""
        if agent is None:
            if self.is_supervisor(token):
                return "supervisor"
            raise Refused(401, "missing or wrong bearer token")
        if not isinstance(agent, str) or not agent:
            raise Refused(400, "agent must be a non-empty string")
        if self.authenticate is None or not self.authenticate(agent, token):
            raise Refused(401, f"wrong token for agent {agent!r}")
        if call.agent != agent:
            raise Refused(403, f"agent {agent!r} is not the agent of this call")
        return f"agent {agent}"

    def escalation_verdict(self, esc_id: str, verdict: Any, token: str, agent: Any) -> Event:
        """Publish the verdict on an escalation; ``Refused`` says why not."""
        if verdict not in ESCALATION_VERDICTS:
            raise Refused(400, f"verdict must be one of {', '.join(ESCALATION_VERDICTS)}")
        esc = self.escalations.get(esc_id)
        if esc is None:
            raise Refused(404, f"no live or recent escalation {esc_id!r}")
        by = self.who(token, agent, self._call(esc.call_id))
        return self._publish(esc.call_id, esc.role, verdict, by, escalation_id=esc_id, raised_at=esc.raised_at,
                             cleared_at=esc.cleared_at)

    def call_verdict(self, call_id: str, verdict: Any, token: str, agent: Any) -> Event:
        """Publish the verdict on a call (its caller's leg); ``Refused`` says why not."""
        if verdict not in CALL_VERDICTS:
            raise Refused(400, f"verdict must be one of {', '.join(CALL_VERDICTS)}")
        call = self._call(call_id)
        by = self.who(token, agent, call)
        role = next((r for r in CALLER_ROLES if r in call.roles), sorted(call.roles)[0])
        return self._publish(call_id, role, verdict, by,
                             escalations=sum(self.escalations[e].role == role for e in call.escalations))

    def _publish(self, call_id: str, role: str, verdict: str, by: str, **fields: Any) -> Event:
        event = self.bus.make_event("feedback", call_id, role, verdict=verdict, by=by, **fields)
        self.bus.publish(event)
        return event


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Refused(413, f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, 'expected JSON {"verdict": "...", "agent"?: "..."}') from None
    if not isinstance(data, dict):
        raise Refused(400, 'expected a JSON object {"verdict": "...", "agent"?: "..."}')
    return data


def add_routes(app: web.Application, desk: FeedbackDesk, token_of: Callable[[web.Request], str]) -> None:
    """The two feedback routes (their own auth: ``OWN_AUTH`` paths pass the API's token check)."""

    async def handle(request: web.Request, decide: Callable[[str, Any, str, Any], Event]) -> web.Response:
        subject, token = request.match_info["id"], token_of(request)
        try:
            try:
                data = await _body(request)
            except Refused:
                if not desk.is_supervisor(token):
                    raise Refused(401, "missing or wrong bearer token") from None  # who it is comes with the body
                raise
            event = decide(subject, data.get("verdict"), token, data.get("agent"))
        except Refused as exc:
            log.warning("feedback refused: %s %s from %s: %d %s", request.method, request.path, request.remote,
                        exc.status, exc)
            return web.json_response({"error": str(exc)}, status=exc.status,
                                     headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
        return web.json_response(event)

    async def on_escalation(request: web.Request) -> web.Response:
        return await handle(request, desk.escalation_verdict)

    async def on_call(request: web.Request) -> web.Response:
        return await handle(request, desk.call_verdict)

    app.router.add_post("/escalations/{id}/feedback", on_escalation)
    app.router.add_post("/calls/{id}/feedback", on_call)
