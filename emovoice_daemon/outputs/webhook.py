"""Webhook: POST selected events (JSON) to a URL, signed, with retries and exponential back-off.

Headers: ``X-EmoVoice-Event`` (type), ``X-EmoVoice-Timestamp`` (Unix seconds) and
``X-EmoVoice-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>``.
A receiver recomputes the HMAC and rejects old timestamps (replays). Events are queued by
the bus sink and sent one at a time by ``run()``; a full queue drops its oldest event and a
delivery that still fails after ``retries`` is logged and counted, never raised.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import aiohttp

from emovoice_daemon.config import WebhookConfig, read_secret
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import Event

log = logging.getLogger(__name__)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookSender:
    """Delivers events to ``cfg.url``."""

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.secret = read_secret(cfg.secret, cfg.secret_file, "EMOVOICE_WEBHOOK_SECRET")
        self._queue: asyncio.Queue[Event] = asyncio.Queue(cfg.queue)

    def sink(self, event: Event) -> None:
        """EventBus sink: queue the configured event types (never blocks)."""
        if event["type"] not in self.cfg.events:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            metrics.WEBHOOK_DELIVERIES.labels("dropped").inc()
        self._queue.put_nowait(event)

    async def run(self) -> None:
        """Send queued events until cancelled."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                event = await self._queue.get()
                try:
                    outcome = "sent" if await self.deliver(session, event) else "failed"
                    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
                finally:
                    self._queue.task_done()

    async def drain(self, timeout_s: float) -> bool:
        """At shutdown: wait up to ``timeout_s`` for the queue to be sent (or given up on); False if time ran out."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
            return True
        except asyncio.TimeoutError:
            log.error("webhook: shutting down with %d events not delivered", self._queue.qsize())
            return False

    async def deliver(self, session: aiohttp.ClientSession, event: Event) -> bool:
        """POST one event, retrying on connection errors, timeouts and 5xx/429; True when accepted."""
        body = json.dumps(event).encode()
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-EmoVoice-Event": event["type"],
                       "X-EmoVoice-Timestamp": timestamp}
            if self.secret:
                headers["X-EmoVoice-Signature"] = sign(self.secret, timestamp, body)
            try:
                async with session.post(self.cfg.url, data=body, headers=headers) as resp:
                    if resp.status < 300:
                        return True
                    problem = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status != 429:
                        break  # the receiver rejected it; sending it again will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("webhook %s attempt %d/%d for %s of %s: %s", self.cfg.url, attempt + 1,
                        self.cfg.retries + 1, event["type"], event["call_id"], problem)
        log.error("webhook: giving up on %s of call %s (%s)", event["type"], event["call_id"], problem)
        return False
