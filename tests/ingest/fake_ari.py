"""A fake Asterisk ARI (REST + /ari/events WebSocket) for tests, modelled on Asterisk 22.10.1.

Response bodies and event objects copy the key order and values of the real captures in
``../shared/asterisk/scenarios/ari_rest_*.jsonl`` and ``ari_events*.jsonl``; the clock, the
UnicastRTP pointer and the RTP port are injectable so a replay of a capture matches it exactly.
Each ExternalMedia channel owns a real UDP socket on 127.0.0.1 (its UNICASTRTP_LOCAL_PORT), so
tests can send RTP from exactly where Asterisk would.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import time
from typing import Any, Callable

from aiohttp import WSMsgType, web

ASTERISK_ID = "02:fc:00:00:00:01"


def ari_time(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}+0000"


def _dialplan(context: str, exten: str, priority: int, app_name: str = "", app_data: str = "") -> dict[str, Any]:
    return {"context": context, "exten": exten, "priority": priority, "app_name": app_name, "app_data": app_data}


class FakeAri:
    def __init__(self, app: str = "emovoice", user: str = "emovoice", password: str = "secret") -> None:
        self.app, self.user, self.password = app, user, password
        self.channels: dict[str, dict[str, Any]] = {}
        self.bridges: dict[str, dict[str, Any]] = {}
        self.in_stasis: set[str] = set()
        self.snoop_enters_after_s = 0.0  # > 0: a snoop enters the app only this long after its POST returned
        self.snooped: dict[str, str] = {}  # snoop id -> channel it listens to
        self.requests: list[dict[str, Any]] = []  # same shape as ari_rest_*.jsonl
        self.events: list[dict[str, Any]] = []  # every event sent on the app socket
        self.sockets: list[web.WebSocketResponse] = []
        self.rtp_sockets: dict[str, socket.socket] = {}
        self.clock: Callable[[], str] = ari_time  # event timestamps
        self.created: Callable[[], str] = ari_time  # creationtime of channels and bridges
        self.pointers: Callable[[], str] = lambda: f"0x7fb2a{id(object()) & 0xFFFFFFF:07x}"
        self.rtp_port: Callable[[], int] | None = None  # None: a real free UDP port per channel
        self.fail_next: dict[str, int] = {}  # path suffix -> status to answer once
        self._snoop_seq = itertools.count()

    # -- app ---------------------------------------------------------------------------------
    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        r = app.router
        r.add_get("/ari/events", self._events)
        r.add_get("/ari/channels", self._list_channels)
        r.add_get("/ari/bridges", self._list_bridges)
        r.add_post("/ari/channels/externalMedia", self._external_media)
        r.add_post("/ari/channels/{id}/snoop", self._snoop)
        r.add_post("/ari/channels/{id}/continue", self._continue)
        r.add_get("/ari/channels/{id}/variable", self._variable)
        r.add_delete("/ari/channels/{id}", self._delete_channel)
        r.add_post("/ari/bridges", self._create_bridge)
        r.add_post("/ari/bridges/{id}/addChannel", self._add_channel)
        r.add_delete("/ari/bridges/{id}", self._delete_bridge)
        app.on_shutdown.append(lambda _: self.drop_connections())
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        expected = f"{self.user}:{self.password}"
        header = request.headers.get("Authorization", "")
        basic = header.startswith("Basic ") and base64.b64decode(header[6:]).decode() == expected
        if not basic and request.query.get("api_key") != expected:
            return web.json_response({"message": "Authentication required"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'})
        path = request.path.removeprefix("/ari")
        for suffix, status in list(self.fail_next.items()):
            if path.endswith(suffix):
                del self.fail_next[suffix]
                return self._reply(request, status, {"message": "Injected failure"})
        return await handler(request)

    def _reply(self, request: web.Request, status: int, body: Any) -> web.Response:
        params = {k: v for k, v in request.query.items() if k != "api_key"}
        self.requests.append({"method": request.method, "path": request.path.removeprefix("/ari"),
                              "params": params, "status": status, "body": "" if status == 204 else body})
        if status == 204:
            return web.Response(status=204)
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    def _not_found(self, request: web.Request, what: str) -> web.Response:
        return self._reply(request, 404, {"message": f"{what} not found"})

    # -- objects -----------------------------------------------------------------------------
    def _channel(self, cid: str, name: str, state: str, dialplan: dict[str, Any], caller: str = "") -> dict[str, Any]:
        return {"id": cid, "name": name, "state": state, "protocol_id": "",
                "caller": {"name": "", "number": caller}, "connected": {"name": "", "number": ""},
                "accountcode": "", "dialplan": dialplan, "creationtime": self.created(), "language": "en"}

    async def emit(self, type_: str, **fields: Any) -> None:
        """Send one event, fields in Asterisk's order (type-specific keys first for some types)."""
        head = {k: fields.pop(k) for k in ("variable", "value", "cause") if k in fields and type_ != "ChannelDestroyed"}
        event = {**head, "type": type_, "timestamp": self.clock(), **fields,
                 "asterisk_id": ASTERISK_ID, "application": self.app}
        self.events.append(event)
        for ws in list(self.sockets):
            await ws.send_str(json.dumps(event))

    async def start_call(self, cid: str, name: str = "PJSIP/customer-00000001", caller: str = "5551234",
                         args: list[str] | None = None) -> None:
        """A call channel runs Stasis(app[,args]) from the dialplan."""
        ch = self._channel(cid, name, "Up", _dialplan("from-pstn", "s", 2, "Stasis", self.app), caller)
        self.channels[cid] = ch
        self.in_stasis.add(cid)
        await self.emit("StasisStart", args=args or [], channel=ch)

    async def hangup(self, cid: str, cause: int = 16) -> None:
        """The caller hangs up: the channel and every snoop on it go away."""
        ch = self.channels.pop(cid)
        if cid in self.in_stasis:
            self.in_stasis.discard(cid)
            await self.emit("ChannelHangupRequest", cause=cause, channel=ch)
            await self.emit("StasisEnd", channel=ch)
        for snoop, target in list(self.snooped.items()):
            if target == cid:
                await self._destroy(snoop)

    async def _destroy(self, cid: str, cause: int = 16) -> None:
        ch = self.channels.pop(cid, None)
        self.snooped.pop(cid, None)
        if sock := self.rtp_sockets.pop(cid, None):
            sock.close()
        if ch is None:
            return
        for bridge in self.bridges.values():
            if cid in bridge["channels"]:
                bridge["channels"].remove(cid)
                await self.emit("ChannelLeftBridge", bridge=bridge, channel=ch)
        if cid in self.in_stasis:
            self.in_stasis.discard(cid)
            await self.emit("StasisEnd", channel=ch)
        await self.emit("ChannelDestroyed", cause=cause, cause_txt="Normal Clearing", channel=ch)

    def send_rtp(self, media_id: str, packets: list[bytes]) -> None:
        """Send RTP as the ExternalMedia channel would: from its local port to its external_host."""
        host, port = self.channels[media_id]["name"].split("/", 1)[1].rsplit("-", 1)[0].rsplit(":", 1)
        for p in packets:
            self.rtp_sockets[media_id].sendto(p, (host, int(port)))

    async def drop_connections(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    # -- handlers ----------------------------------------------------------------------------
    async def _events(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("app") != self.app:
            return web.json_response({"message": "Invalid application provided in param [app]."}, status=400)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.remove(ws)
        return ws

    async def _list_channels(self, request: web.Request) -> web.Response:
        return self._reply(request, 200, [self._public(c) for c in self.channels.values()])

    async def _list_bridges(self, request: web.Request) -> web.Response:
        return self._reply(request, 200, list(self.bridges.values()))

    async def _snoop(self, request: web.Request) -> web.Response:
        target = request.match_info["id"]
        if target not in self.channels:
            return self._not_found(request, "Channel")
        q = request.query
        if q.get("spy", "none") not in ("none", "both", "out", "in") or "app" not in q:
            return self._reply(request, 400, {"message": "Invalid spy or missing app"})
        sid = q.get("snoopId") or f"{time.time():.3f}"
        ch = self._channel(sid, f"Snoop/{target}-{next(self._snoop_seq):08x}", "Up", _dialplan("default", "s", 1))
        self.channels[sid] = ch
        self.snooped[sid] = target
        resp = self._reply(request, 200, dict(ch))
        ch["dialplan"] = _dialplan("default", "s", 1, "Stasis", q["app"])
        if self.snoop_enters_after_s:  # as a loaded Asterisk: the snoop's own thread starts the app later
            asyncio.get_running_loop().call_later(self.snoop_enters_after_s, asyncio.ensure_future,
                                                  self._enter_stasis(sid, ch))
        else:
            await self._enter_stasis(sid, ch)
        return resp

    async def _enter_stasis(self, cid: str, ch: dict[str, Any]) -> None:
        self.in_stasis.add(cid)
        await self.emit("StasisStart", args=[], channel=ch)

    async def _external_media(self, request: web.Request) -> web.Response:
        q = request.query
        missing = [k for k in ("app", "external_host", "format") if k not in q]
        if missing:
            return self._reply(request, 400, {"message": f"Missing required parameter: {missing[0]}"})
        mid = q.get("channelId") or f"{time.time():.3f}"
        ch = self._channel(mid, f"UnicastRTP/{q['external_host']}-{self.pointers()}", "Down",
                           _dialplan("default", "s", 1, "AppDial2", "(Outgoing Line)"))
        if self.rtp_port is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            self.rtp_sockets[mid] = sock
            port = sock.getsockname()[1]
        else:
            port = self.rtp_port()
        self.channels[mid] = ch
        resp = self._reply(request, 200, {**ch, "channelvars": {"UNICASTRTP_LOCAL_PORT": str(port),
                                                                "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"}})
        ch["channelvars"] = {"UNICASTRTP_LOCAL_PORT": str(port), "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"}
        dialstring = f"{q['external_host']}/c({q['format']})"
        await self.emit("Dial", dialstatus="", forward="", dialstring=dialstring, peer=self._public(ch))
        ch["state"] = "Up"
        await self.emit("ChannelStateChange", channel=self._public(ch))
        await self.emit("Dial", dialstatus="ANSWER", forward="", dialstring=dialstring, peer=self._public(ch))
        ch["dialplan"] = _dialplan("default", "s", 1, "Stasis", q["app"])
        await self.emit("ChannelVarset", variable="STASISSTATUS", value="", channel=self._public(ch))
        self.in_stasis.add(mid)
        await self.emit("StasisStart", args=[], channel=self._public(ch))
        return resp

    @staticmethod
    def _public(ch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in ch.items() if k != "channelvars"}

    async def _continue(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        if cid not in self.channels:
            return self._not_found(request, "Channel")
        if cid not in self.in_stasis:
            return self._reply(request, 409, {"message": "Channel not in Stasis application"})
        self.in_stasis.discard(cid)
        resp = self._reply(request, 204, "")
        await self.emit("StasisEnd", channel=self.channels[cid])
        return resp

    async def _variable(self, request: web.Request) -> web.Response:
        ch = self.channels.get(request.match_info["id"])
        if ch is None:
            return self._not_found(request, "Channel")
        value = ch.get("channelvars", {}).get(request.query.get("variable", ""))
        if value is None:
            return self._reply(request, 404, {"message": "Provided variable was not found"})
        return self._reply(request, 200, {"value": value})

    async def _delete_channel(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        if cid not in self.channels:
            return self._not_found(request, "Channel")
        resp = self._reply(request, 204, "")
        await self._destroy(cid, cause=16)
        return resp

    async def _create_bridge(self, request: web.Request) -> web.Response:
        bid = request.query.get("bridgeId") or f"{time.time():.3f}"
        bridge = {"id": bid, "technology": "simple_bridge", "bridge_type": request.query.get("type", "mixing"),
                  "bridge_class": "stasis", "creator": "Stasis", "name": "", "channels": [],
                  "creationtime": self.created(), "video_mode": "talker"}
        self.bridges[bid] = bridge
        return self._reply(request, 200, dict(bridge, channels=[]))

    async def _add_channel(self, request: web.Request) -> web.Response:
        bridge = self.bridges.get(request.match_info["id"])
        if bridge is None:
            return self._not_found(request, "Bridge")
        ids = request.query.get("channel", "").split(",")
        if any(i not in self.channels for i in ids):
            return self._reply(request, 400, {"message": "Channel not found"})
        if any(i not in self.in_stasis for i in ids):
            return self._reply(request, 422, {"message": "Channel not in Stasis application"})
        resp = self._reply(request, 204, "")
        for i in ids:
            bridge["channels"].append(i)
            await self.emit("ChannelEnteredBridge", bridge=dict(bridge, channels=list(bridge["channels"])),
                            channel=self._public(self.channels[i]))
        return resp

    async def _delete_bridge(self, request: web.Request) -> web.Response:
        bridge = self.bridges.pop(request.match_info["id"], None)
        if bridge is None:
            return self._not_found(request, "Bridge")
        resp = self._reply(request, 204, "")
        await self.emit("BridgeDestroyed", bridge=dict(bridge, channels=[]))
        return resp
