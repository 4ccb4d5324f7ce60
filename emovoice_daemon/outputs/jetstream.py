"""NATS JetStream: every event published to one stream, read back by followers and durable consumers.

Subjects are ``emovoice.<site>.<call>.<type>`` (``emovoice.lyon.8d1f….score``,
``emovoice.lyon.8d1f….call.ended``); characters of a call id that a subject token cannot hold
become ``_``. Filters: one site ``emovoice.lyon.>``, one call ``emovoice.*.<call>.>``, call
lifecycle ``emovoice.*.*.call.>``, escalations ``emovoice.*.*.escalation.>``.

A message is the event's JSON plus ``site``. Its ``Nats-Msg-Id`` header (``<site>:<boot>:<seq>``, the event's
own run id and sequence number) makes a re-sent event a duplicate that JetStream drops within the
stream's duplicate window. The publisher holds each event in a bounded buffer until JetStream
acknowledges it, so a reconnect re-sends instead of losing, and the id keeps the re-send from
doubling; a full buffer gives up scores first (the newest), lifecycle events (call, escalation) only
when it holds nothing else, so a reader never sees a call without its start or end while scores remain to drop; events of one call are never in flight together, so a retry cannot reorder a call.
Readers hand each id on once: an ordered consumer for live views, a durable pull consumer (acked
after the handler returns, redeliveries of an id already handled skipped) for the call history.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from emovoice_daemon.config import JetStreamConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import Event

log = logging.getLogger(__name__)

PREFIX = "emovoice"
MSG_ID = "Nats-Msg-Id"
IN_FLIGHT = 64  # publishes awaiting their ack at once (each of a different call)
REQUEST_TIMEOUT_S = 5.0
RETRY_S = (0.2, 5.0)  # first and longest back-off between failed attempts
FETCH = 256
HEARTBEAT_S = 1.0  # an ordered consumer silent for two heartbeats is re-created
RECENT_IDS = 100_000  # ids a durable reader remembers to skip redeliveries
UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
T = TypeVar("T")


def site_name(cfg: JetStreamConfig) -> str:
    """The configured site, or this host's short name made subject-safe."""
    return cfg.site or UNSAFE.sub("_", socket.gethostname().split(".")[0])


def subject_for(site: str, event: Event) -> str:
    return f"{PREFIX}.{site}.{UNSAFE.sub('_', event['call_id']) or '_'}.{event['type']}"


def site_filter(site: str = "*") -> str:
    """Every event of one site (``*``: all sites)."""
    return f"{PREFIX}.{site}.>"


async def connect(cfg: JetStreamConfig, name: str, on_state: Callable[[bool, str], None] | None = None) -> Client:
    """A NATS connection that reconnects forever; ``on_state(connected, why)`` hears every change.

    It returns once connected; until then the first failure is logged (an error) and reported."""
    connected_once = failing = False

    def report(connected: bool, why: str) -> None:
        (log.info if connected else log.warning)("nats: %s", why)
        if on_state is not None:
            on_state(connected, why)

    async def disconnected() -> None:
        if not nc.is_closed:  # closing is not news
            report(False, "disconnected; reconnecting")

    async def reconnected() -> None:
        report(True, f"reconnected to {nc.connected_url.netloc if nc.connected_url else '?'}")

    async def error(exc: Exception) -> None:
        nonlocal failing
        if connected_once or failing:
            log.debug("nats: %s: %s", type(exc).__name__, exc)
            return
        failing = True  # nats.connect() retries the first connection forever without raising: say so once
        log.error("nats: cannot connect to %s (%s: %s); retrying", ", ".join(cfg.servers), type(exc).__name__, exc)
        if on_state is not None:
            on_state(False, f"cannot connect to {', '.join(cfg.servers)}")

    options: dict[str, Any] = {"servers": cfg.servers, "name": name, "max_reconnect_attempts": -1,
                               "reconnect_time_wait": 0.5, "connect_timeout": 2, "error_cb": error,
                               "disconnected_cb": disconnected, "reconnected_cb": reconnected}
    if cfg.credentials_file:
        options["user_credentials"] = cfg.credentials_file
    nc = await retrying(f"nats: cannot connect to {', '.join(cfg.servers)}", lambda: nats.connect(**options))
    connected_once = True
    report(True, f"connected to {nc.connected_url.netloc if nc.connected_url else '?'}")
    return nc


async def retrying(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` until it succeeds, backing off; one log line when it starts failing."""
    delay, logged = RETRY_S[0], False
    while True:
        try:
            return await attempt()
        except (NatsError, OSError, asyncio.TimeoutError) as exc:
            if not logged:
                log.error("%s (%s: %s); retrying", what, type(exc).__name__, exc)
                logged = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_S[1])


async def ensure_stream(js: JetStreamContext, cfg: JetStreamConfig) -> None:
    """Create the stream (all ``emovoice.>`` subjects) unless it exists."""
    try:
        await js.stream_info(cfg.stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=cfg.stream, subjects=[f"{PREFIX}.>"], storage=StorageType.FILE, num_replicas=cfg.replicas,
            max_age=cfg.max_age_days * 86400 or None, duplicate_window=cfg.duplicate_window_s))
        log.info("jetstream: created stream %s (%d replicas)", cfg.stream, cfg.replicas)


@dataclass
class _Outgoing:
    subject: str
    payload: bytes
    msg_id: str
    call: str
    lifecycle: bool
    acked: bool = False


class JetStreamPublisher:
    """EventBus sink: every event waits in a bounded buffer until JetStream acknowledges it."""

    def __init__(self, cfg: JetStreamConfig) -> None:
        self.cfg, self.site = cfg, site_name(cfg)
        self._buffer: deque[_Outgoing] = deque()
        self._wake = asyncio.Event()
        self._nc: Client | None = None
        self._failing = False
        self._dropping = False
        self._connected = False
        self._last_drop = -float("inf")

    def sink(self, event: Event) -> None:
        """Queue one event (never blocks); a full buffer drops a score (the newest), else its oldest event."""
        lifecycle = event["type"] != "score"
        if len(self._buffer) >= self.cfg.buffer and not self._make_room(lifecycle):
            return
        payload = json.dumps({**event, "site": self.site}, separators=(",", ":")).encode()
        self._buffer.append(_Outgoing(subject_for(self.site, event), payload,
                                      f"{self.site}:{event['boot']}:{event['seq']}", event["call_id"], lifecycle))
        metrics.JETSTREAM_BUFFERED.set(len(self._buffer))
        self._wake.set()

    def _make_room(self, lifecycle: bool) -> bool:
        """The buffer is full: drop one event, counted by kind; False when it is the incoming one (a score)."""
        if not lifecycle:
            self._dropped("score")
            return False
        oldest_score = next((i for i, item in enumerate(self._buffer) if not item.lifecycle), None)
        if oldest_score is None:
            self._buffer.popleft()
            self._dropped("lifecycle")
        else:
            del self._buffer[oldest_score]
            self._dropped("score")
        return True

    def _dropped(self, kind: str) -> None:
        metrics.JETSTREAM_DROPPED.labels(kind).inc()
        self._last_drop = time.monotonic()
        if not self._dropping:
            log.error("jetstream: buffer full (%d events): dropping scores, and lifecycle events only when no score "
                      "is left, until NATS takes events again", self.cfg.buffer)
            self._dropping = True

    def problem(self, window_s: float) -> str | None:
        """Why events are not reaching JetStream now (None: they are), for /health."""
        if not self._connected:
            return f"not connected to NATS ({', '.join(self.cfg.servers)}): {len(self._buffer)} events waiting"
        if self._failing:
            return f"publishing to JetStream fails: {len(self._buffer)} events waiting"
        if time.monotonic() - self._last_drop < window_s:
            return f"the JetStream buffer was full in the last {window_s:g} s: events dropped"
        return None

    def _state(self, connected: bool, why: str) -> None:
        self._connected = connected

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        """Connect, create the stream if absent, then publish the buffer until cancelled."""
        self._nc = await connect(self.cfg, f"emovoice-daemon {self.site}", self._state)
        js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        await retrying(f"jetstream: cannot create or find stream {self.cfg.stream}",
                       lambda: ensure_stream(js, self.cfg))
        delay = RETRY_S[0]
        while True:
            await self._wake.wait()
            if not self._buffer:
                self._wake.clear()
                continue
            if await self._publish_batch(js):
                delay = RETRY_S[0]
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])

    def _batch(self) -> list[_Outgoing]:
        """The oldest events, up to the first that shares a call with an earlier one (per-call order)."""
        batch, calls = [], set()
        for item in self._buffer:
            if item.call in calls or len(batch) == IN_FLIGHT:
                break
            calls.add(item.call)
            batch.append(item)
        return batch

    async def _publish_batch(self, js: JetStreamContext) -> bool:
        """Publish one batch; acknowledged events leave the buffer. False when any publish failed."""
        batch = self._batch()
        acks = await asyncio.gather(*(js.publish(i.subject, i.payload, headers={MSG_ID: i.msg_id}) for i in batch),
                                    return_exceptions=True)
        errors = [a for a in acks if isinstance(a, Exception)]
        for item, ack in zip(batch, acks):
            if not isinstance(ack, Exception):
                item.acked = True
                metrics.JETSTREAM_PUBLISHED.labels("duplicate" if ack.duplicate else "stored").inc()
        while self._buffer and self._buffer[0].acked:
            self._buffer.popleft()
        if errors:
            self._buffer = deque(i for i in self._buffer if not i.acked)
            metrics.JETSTREAM_FAILED.inc(len(errors))
        metrics.JETSTREAM_BUFFERED.set(len(self._buffer))
        self._report(errors)
        return not errors

    def _report(self, errors: list[Exception]) -> None:
        if errors and not self._failing:
            log.error("jetstream: publishing failed (%s); %d events buffered, retrying",
                      type(errors[0]).__name__, len(self._buffer))
        elif not errors and self._failing:
            log.warning("jetstream: publishing again (%d events buffered)", len(self._buffer))
        self._failing = bool(errors)
        self._dropping = self._dropping and bool(errors)

    async def close(self, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """Give the buffer up to ``timeout_s`` to reach JetStream (shutdown), then close the connection."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._buffer and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._buffer:
            log.error("jetstream: %d events not delivered at shutdown (NATS unreachable for %.0f s)",
                      len(self._buffer), timeout_s)
        if self._nc is not None:
            await self._nc.close()


def decode(msg: Msg) -> Event:
    return json.loads(msg.data)


async def follow(js: JetStreamContext, stream: str, subject: str, since_s: float = 0.0) -> AsyncIterator[Event]:
    """Events on ``subject`` from now on (or from ``since_s`` seconds ago), in stream order, each once.

    An ordered consumer: ephemeral, flow-controlled, and re-created after the last event it
    delivered when a node holding it goes away, so it neither skips nor repeats."""
    if since_s > 0:
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=since_s)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    sub = await retrying(f"jetstream: cannot follow {subject} on stream {stream}",
                         lambda: js.subscribe(subject, stream=stream, ordered_consumer=True, config=config,
                                                      idle_heartbeat=HEARTBEAT_S))
    try:
        async for msg in sub.messages:
            yield decode(msg)
    finally:
        await sub.unsubscribe()


def message_id(msg: Msg) -> str:
    return (msg.headers or {}).get(MSG_ID) or f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"


class DurableReader:
    """A durable pull consumer: ``run(handle)`` feeds ``handle(event, msg_id)`` every event once.

    Each message is acked after ``handle`` returns, so a crash redelivers it (``handle`` must be
    idempotent by ``msg_id`` across restarts); within one process a redelivered id (its ack was
    lost, e.g. to a node failure) is acked again and skipped, counted in ``skipped``."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, subject: str) -> None:
        self.js, self.stream, self.durable, self.subject = js, stream, durable, subject
        self.skipped = 0
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def run(self, handle: Callable[[Event, str], Awaitable[None]]) -> None:
        sub = await retrying(f"jetstream: cannot open durable consumer {self.durable} on {self.stream}",
                             lambda: self.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                                            config=ConsumerConfig(ack_wait=30.0)))
        failing = False
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=2.0)
            except asyncio.TimeoutError:
                continue  # nothing new (nats.errors.TimeoutError is one too)
            except NatsError as exc:
                if not failing:
                    log.warning("jetstream: consumer %s: %s: %s; retrying", self.durable, type(exc).__name__, exc)
                failing = True
                await asyncio.sleep(RETRY_S[0])
                continue
            failing = False
            for msg in msgs:
                await self._deliver(msg, handle)

    async def _deliver(self, msg: Msg, handle: Callable[[Event, str], Awaitable[None]]) -> None:
        msg_id = message_id(msg)
        if msg_id in self._recent:
            self.skipped += 1
            metrics.JETSTREAM_REDELIVERIES_SKIPPED.inc()
        else:
            await handle(decode(msg), msg_id)
            self._recent[msg_id] = None
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        try:
            await msg.ack()
        except NatsError:
            pass  # connection lost: JetStream redelivers it and the id is skipped then
