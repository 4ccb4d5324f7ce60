"""``emovoice-daemon hub``: the site-wide services of several call servers, fed by JetStream.

Each call server's daemon publishes its events to the stream (``jetstream`` section); the hub
reads them back, so supervisors, agents and QA have one place whatever server took a call:

- the call history of every site (``history.path``, ``GET /calls``), written through the durable
  consumer ``emovoice-history``: each event is applied once, also when JetStream redelivers it
  after a crash (its id is stored in the same transaction); ``meta.site`` says which server;
- the agent notifier (``/agent/``, ``/agent/ws``, ``/agent/bind``) following the stream;
- ``/events`` (every site's events: ``emovoice-top --url`` works against the hub), the wallboard
  ``/supervisor/``, ``/health``, ``/metrics``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from emovoice_daemon.config import Config
from emovoice_daemon.outputs.api import ApiContext, api_token, start_api
from emovoice_daemon.outputs.events import Event, EventBus
from emovoice_daemon.outputs.history import CallHistory
from emovoice_daemon.outputs.jetstream import (PREFIX, DurableReader, connect, ensure_stream, follow, retrying,
                                               site_filter)
from emovoice_daemon.outputs.notifier import AgentNotifier
from emovoice_daemon.outputs.supervisor import SupervisorBoard
from emovoice_daemon.service.lifecycle import stop_on_signals

log = logging.getLogger(__name__)

HISTORY_DURABLE = "emovoice-history"
LIFECYCLE = f"{PREFIX}.*.*.call.>"


class Hub:
    """The site-wide history, agent notifier and API of one JetStream stream."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.api_token = api_token(config.api)
        self.bus = EventBus(config.events.subscriber_queue)
        self.history = (CallHistory(config.history.path, config.history.retention_days, keep_live=True)
                        if config.history.enabled else None)
        self.notifier = AgentNotifier(config.notifier, self.api_token) if config.notifier.enabled else None
        if self.notifier is not None:
            self.bus.add_sink(self.notifier.sink)
        self.board = SupervisorBoard(self.api_token, listen=False)  # listen-in goes through the call's daemon
        self.bus.add_sink(self.board.sink)
        self.started_at = time.time()
        self.live: set[tuple[str, str, str]] = set()  # (site, call, role): legs started (since the hub) not ended
        self._nc: Client | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self.config.jetstream
        self._nc = await connect(cfg, "emovoice-hub")
        js = self._nc.jetstream()
        await retrying(f"jetstream: cannot create or find stream {cfg.stream}", lambda: ensure_stream(js, cfg))
        if self.history is not None:
            reader = DurableReader(js, cfg.stream, HISTORY_DURABLE, LIFECYCLE)
            self._tasks.append(asyncio.create_task(reader.run(self._record), name="site-history"))
        self._tasks.append(asyncio.create_task(self._follow(js), name="follow"))
        if self.config.api.enabled:
            context = ApiContext(self.api_token, self.config.api.metrics_public, self.bus, self.health,
                                 self.history, self.notifier, supervisor=self.board)
            self._runner, _ = await start_api(self.config.api, context)
        log.info("emovoice hub ready (stream %s on %s)", cfg.stream, ", ".join(cfg.servers))

    async def _record(self, event: Event, msg_id: str) -> None:
        if event["type"] == "call.started":
            event = {**event, "meta": {**event.get("meta", {}), "site": event.get("site", "")}}
        await self.history.write(event, msg_id)

    async def _follow(self, js: JetStreamContext) -> None:
        async for event in follow(js, self.config.jetstream.stream, site_filter()):
            leg = (event.get("site", ""), event["call_id"], event["role"])
            if event["type"] == "call.started":
                self.live.add(leg)
            elif event["type"] == "call.ended":
                self.live.discard(leg)
            self.bus.publish(event)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "role": "hub", "legs": len(self.live),
                "sites": sorted({site for site, _, _ in self.live}),
                "nats": bool(self._nc and self._nc.is_connected), "uptime_s": round(time.time() - self.started_at, 1)}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.notifier is not None:
            await self.notifier.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.history is not None:
            self.history.close()
        if self._nc is not None:
            await self._nc.close()
        log.info("emovoice hub stopped")


async def run_hub(config: Config) -> None:
    """Run a hub until SIGTERM/SIGINT."""
    stop = stop_on_signals()
    hub = Hub(config)
    try:
        await hub.start()
        await stop.wait()
    finally:
        await hub.stop()
