"""ARI controller: taps each call with snoop + ExternalMedia channels, one leg per direction.

On ``StasisStart`` of a call channel, for each configured direction it creates a snoop
channel (``spy=in``: the channel's own voice; ``spy=out``: what it hears), an ExternalMedia
channel that sends RTP to our :class:`~emovoice_daemon.ingest.rtp.RtpReceiver`, and a mixing bridge
joining the two; then it sends the call back to the dialplan (``continue``), so the call path
is unchanged. The RTP source of each ExternalMedia channel (``UNICASTRTP_LOCAL_ADDRESS``/
``PORT``) identifies the leg. Everything is torn down when any of the call's channels ends
(``StasisEnd``/``ChannelDestroyed``) or its RTP stops, and every object we create carries
``id_prefix`` so leftovers of an earlier run are deleted when the WebSocket (re)connects.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from emovoice_daemon.calls import CallManager, Leg
from emovoice_daemon.config import AriConfig, RtpConfig, read_secret
from emovoice_daemon.ingest.rtp import Address, AudioSink, RtpReceiver
from emovoice_daemon.judgement.cues import CallCues, CueTracker

log = logging.getLogger(__name__)

OTHER_ROLE = {"customer": "agent", "agent": "customer"}
RTP_PORT_VAR = "UNICASTRTP_LOCAL_PORT"
RTP_ADDR_VAR = "UNICASTRTP_LOCAL_ADDRESS"
STASIS_WAIT_S = 10.0  # how long a new snoop/ExternalMedia channel may take to enter the app


class AriError(Exception):
    """An ARI request that Asterisk answered with an error status."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status


class AriClient:
    """Minimal ARI REST client (JSON in, JSON out, basic auth)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def request(self, method: str, path: str, **params: str) -> Any:
        """One REST call; returns the decoded JSON body (None for 204) or raises AriError."""
        async with self.session.request(method, self.base_url + path, params=params) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = (await resp.json(content_type=None)).get("message", text)
                except (ValueError, AttributeError):
                    message = text
                raise AriError(method, path, resp.status, message)
            return await resp.json(content_type=None) if text else None

    async def delete_quietly(self, path: str) -> None:
        """DELETE that treats 'already gone' (404) as success and logs other failures."""
        try:
            await self.request("DELETE", path)
        except AriError as exc:
            if exc.status != 404:
                log.warning("ARI clean-up failed: %s", exc)
        except aiohttp.ClientError as exc:
            log.warning("ARI clean-up failed: DELETE %s: %s", path, exc)


@dataclass
class TapLeg:
    """The Asterisk objects and the leg behind one role of one call."""

    role: str
    snoop_id: str
    media_id: str
    bridge_id: str
    source: Address | None = None
    leg: Leg | None = None


@dataclass
class CallTap:
    call_id: str
    channel: dict[str, Any]
    legs: list[TapLeg] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cues: CallCues | None = None
    ended: bool = False

    def owns(self, channel_id: str) -> bool:
        return channel_id == self.call_id or any(channel_id in (t.snoop_id, t.media_id) for t in self.legs)


class AriController:
    """Keeps the events WebSocket connected and taps every call that enters the Stasis app."""

    def __init__(self, cfg: AriConfig, rtp_cfg: RtpConfig, calls: CallManager, rtp: RtpReceiver,
                 cues: CueTracker | None = None) -> None:
        self.cfg = cfg
        self.calls = calls
        self.rtp = rtp
        self.cues = cues
        self.external_host = rtp_cfg.advertise or f"{rtp_cfg.host}:{rtp_cfg.port}"
        self.taps: dict[str, CallTap] = {}
        self.connected = asyncio.Event()
        self._password = read_secret(cfg.password, cfg.password_file, "EMOVOICE_ARI_PASSWORD")
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._entered: dict[str, asyncio.Event] = {}  # our channels being set up -> set on their StasisStart

    async def start(self) -> None:
        auth = {"Authorization": aiohttp.encode_basic_auth(self.cfg.username, self._password)}
        self._session = aiohttp.ClientSession(headers=auth, timeout=aiohttp.ClientTimeout(total=10))
        self.client = AriClient(self._session, self.cfg.url)
        self._task = asyncio.create_task(self._run(), name="ari-events")

    async def stop(self) -> None:
        """Disconnect and tear every tap down (legs end with reason ``shutdown``)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._jobs, return_exceptions=True)
        for tap in list(self.taps.values()):
            await self._teardown(tap, "shutdown")
        if self._session:
            await self._session.close()

    async def _run(self) -> None:
        """Connect, clean up, read events; reconnect with exponential back-off."""
        delay = 0.5
        ws_url = self.cfg.url.rstrip("/").replace("http", "ws", 1) + "/events"
        while True:
            try:
                assert self._session is not None
                async with self._session.ws_connect(ws_url, params={"app": self.cfg.app}, heartbeat=30) as ws:
                    log.info("ARI connected to %s (app %s)", ws_url, self.cfg.app)
                    delay = 0.5
                    await self._reconcile()
                    self.connected.set()
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(msg.data)
                log.warning("ARI WebSocket closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, AriError, OSError, asyncio.TimeoutError) as exc:
                log.warning("ARI connection failed: %s; retrying in %.1f s", exc, delay)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _dispatch(self, text: str) -> None:
        try:
            event = json.loads(text)
            kind, channel = event["type"], event.get("channel") or {}
        except (ValueError, KeyError, TypeError):
            log.warning("ignored malformed ARI event: %.200s", text)
            return
        if kind == "StasisStart" and channel.get("id", "").startswith(self.cfg.id_prefix):
            if channel["id"] in self._entered:
                self._entered[channel["id"]].set()
        elif kind == "StasisStart":
            self._spawn(self._tap(channel, event.get("args") or []))
        elif kind in ("StasisEnd", "ChannelDestroyed"):
            tap = self._tap_of(channel.get("id", ""))
            if tap and not (kind == "StasisEnd" and channel["id"] == tap.call_id):  # we sent it on ourselves
                self._spawn(self._teardown(tap, "hangup"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception():
            log.error("ARI handler failed", exc_info=task.exception())

    def _tap_of(self, channel_id: str) -> CallTap | None:
        return next((t for t in self.taps.values() if t.owns(channel_id)), None)

    async def _tap(self, channel: dict[str, Any], args: list[str]) -> None:
        """Set up the snoops, media channels and bridges for a call, then continue its dialplan."""
        call_id = channel["id"]
        if call_id in self.taps:
            return
        tap = CallTap(call_id, channel)
        self.taps[call_id] = tap
        if self.cues is not None and len(set(self.cfg.directions)) == 2:
            tap.cues = self.cues.open(call_id)
        async with tap.lock:
            try:
                for direction in self.cfg.directions:
                    await self._tap_direction(tap, direction, self._meta(channel, args))
            except (AriError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                log.warning("could not tap call %s: %s", call_id, exc)
                tap.ended = True
            finally:
                await self._continue(call_id)
        if tap.ended:
            await self._teardown(tap, "error")

    async def _tap_direction(self, tap: CallTap, direction: str, meta: dict[str, Any]) -> None:
        role = self.cfg.channel_role if direction == "in" else OTHER_ROLE[self.cfg.channel_role]
        base = f"{self.cfg.id_prefix}{role}-{tap.call_id}"
        t = TapLeg(role, f"{base}-snoop", f"{base}-media", f"{base}-bridge")
        tap.legs.append(t)
        self._entered.update({t.snoop_id: asyncio.Event(), t.media_id: asyncio.Event()})
        app = self.cfg.app
        await self.client.request("POST", f"/channels/{tap.call_id}/snoop", spy=direction, app=app,
                                  snoopId=t.snoop_id)
        media = await self.client.request("POST", "/channels/externalMedia", app=app,
                                          external_host=self.external_host, format=self.cfg.format,
                                          channelId=t.media_id)
        t.source = await self._rtp_source(media)
        t.leg = self.calls.start_leg(tap.call_id, role, "ari", {**meta, "snoop": direction})
        self.rtp.add_stream(t.source, self.cfg.format, _sink(t.leg, role, tap.cues),
                            lambda: self._teardown(tap, "idle_timeout"))
        await self.client.request("POST", "/bridges", type="mixing", bridgeId=t.bridge_id)
        # A new snoop channel enters the app on its own thread, maybe after its POST returned; adding it
        # to the bridge before that is refused (422 "Channel not in Stasis application").
        await asyncio.wait_for(asyncio.gather(self._entered[t.snoop_id].wait(), self._entered[t.media_id].wait()),
                               STASIS_WAIT_S)
        await self.client.request("POST", f"/bridges/{t.bridge_id}/addChannel", channel=f"{t.snoop_id},{t.media_id}")

    async def _rtp_source(self, media: dict[str, Any]) -> Address:
        """Where the ExternalMedia channel sends RTP from (response channelvars, else a variable GET)."""
        found = dict(media.get("channelvars") or {})
        for var in (RTP_ADDR_VAR, RTP_PORT_VAR):
            if var not in found:  # Asterisk versions that omit channelvars from the response
                reply = await self.client.request("GET", f"/channels/{media['id']}/variable", variable=var)
                found[var] = reply["value"]
        return found[RTP_ADDR_VAR], int(found[RTP_PORT_VAR])

    async def _continue(self, call_id: str) -> None:
        try:
            await self.client.request("POST", f"/channels/{call_id}/continue")
        except (AriError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("call %s not continued (%s); it has probably hung up", call_id, exc)

    @staticmethod
    def _meta(channel: dict[str, Any], args: list[str]) -> dict[str, Any]:
        """Leg metadata: caller, channel name and ``key=value`` Stasis() arguments (e.g. agent=1001)."""
        meta: dict[str, Any] = {"caller": (channel.get("caller") or {}).get("number", ""),
                                "channel": channel.get("name", "")}
        meta.update(a.split("=", 1) for a in args if "=" in a)
        return meta

    async def _teardown(self, tap: CallTap, reason: str) -> None:
        """End the call's legs and delete what we created; idempotent."""
        async with tap.lock:
            if self.taps.get(tap.call_id) is not tap:
                return
            del self.taps[tap.call_id]
            tap.ended = True
            cues = self.cues.close(tap.call_id) if self.cues is not None else None
            for t in tap.legs:
                self._entered.pop(t.snoop_id, None)
                self._entered.pop(t.media_id, None)
                if t.source:
                    self.rtp.remove_stream(t.source)
                if t.leg:
                    await t.leg.end(reason, {"cues": cues} if cues else None)
            for t in tap.legs:
                await self.client.delete_quietly(f"/channels/{t.media_id}")
                await self.client.delete_quietly(f"/channels/{t.snoop_id}")
                await self.client.delete_quietly(f"/bridges/{t.bridge_id}")

    async def _reconcile(self) -> None:
        """After (re)connecting: delete our objects no live tap owns; end taps whose channels vanished."""
        channels = {c["id"] for c in await self.client.request("GET", "/channels")}
        bridges = {b["id"] for b in await self.client.request("GET", "/bridges")}
        for tap in list(self.taps.values()):
            if tap.call_id not in channels:
                await self._teardown(tap, "hangup")
        live = {i for tap in self.taps.values() for t in tap.legs for i in (t.snoop_id, t.media_id, t.bridge_id)}
        prefix = self.cfg.id_prefix
        for cid in sorted(channels):
            if cid.startswith(prefix) and cid not in live:
                log.info("deleting orphaned ARI channel %s", cid)
                await self.client.delete_quietly(f"/channels/{cid}")
        for bid in sorted(bridges):
            if bid.startswith(prefix) and bid not in live:
                log.info("deleting orphaned ARI bridge %s", bid)
                await self.client.delete_quietly(f"/bridges/{bid}")


def _sink(leg: Leg, role: str, cues: CallCues | None) -> AudioSink:
    """Where a role's decoded RTP goes: the leg, and the call's cues when both roles are tapped."""
    if cues is None:
        return leg.feed

    def feed(pcm: Any) -> None:
        leg.feed(pcm)
        cues.feed(role, pcm)
    return feed
