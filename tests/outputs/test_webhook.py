"""Webhook delivery: HMAC signature, retries with back-off, giving up without raising."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from emovoice_daemon.config import WebhookConfig
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.webhook import WebhookSender, sign

SECRET = "s3cret"


class Receiver:
    """A webhook endpoint that fails the first ``fail`` requests with ``status``."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.fail, self.status = fail, status
        self.requests: list[tuple[float, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        if len(self.requests) <= self.fail:
            return web.Response(status=self.status)
        return web.Response(status=204)


async def serve(receiver: Receiver) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app)
    await server.start_server()
    return server


def raised_event(bus: EventBus) -> dict:
    return bus.make_event("escalation.raised", "c1", "customer", severity="alert", reason="r", at=5.0,
                          negative_smoothed=0.8)


async def test_signed_post_retried_with_backoff_until_accepted() -> None:
    receiver = Receiver(fail=2)
    server = await serve(receiver)
    cfg = WebhookConfig(url=str(server.make_url("/hook")), secret=SECRET, retries=3, backoff_s=0.1)
    event = raised_event(EventBus())
    async with aiohttp.ClientSession() as session:
        assert await WebhookSender(cfg).deliver(session, event)
    await server.close()
    assert len(receiver.requests) == 3
    gaps = [b[0] - a[0] for a, b in zip(receiver.requests, receiver.requests[1:])]
    assert 0.09 <= gaps[0] < 0.5 and 0.19 <= gaps[1] < 0.8  # 0.1 s, then doubled
    _, headers, body = receiver.requests[-1]
    assert json.loads(body) == event
    expected = hmac.new(SECRET.encode(), headers["X-EmoVoice-Timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert headers["X-EmoVoice-Signature"] == f"sha256={expected}"
    assert headers["X-EmoVoice-Event"] == "escalation.raised"


async def test_gives_up_after_retries_and_client_errors_are_not_retried(caplog) -> None:
    down = Receiver(fail=100)
    rejecting = Receiver(fail=100, status=400)
    s1, s2 = await serve(down), await serve(rejecting)
    event = raised_event(EventBus())
    async with aiohttp.ClientSession() as session:
        assert not await WebhookSender(WebhookConfig(url=str(s1.make_url("/hook")), retries=2, backoff_s=0.01)
                                       ).deliver(session, event)
        assert not await WebhookSender(WebhookConfig(url=str(s2.make_url("/hook")), retries=2, backoff_s=0.01)
                                       ).deliver(session, event)
        unreachable = WebhookSender(WebhookConfig(url="http://127.0.0.1:9/hook", retries=1, backoff_s=0.01))
        assert not await unreachable.deliver(session, event)
    await s1.close()
    await s2.close()
    assert (len(down.requests), len(rejecting.requests)) == (3, 1)
    assert "giving up on escalation.raised of call c1 (HTTP 400)" in caplog.text
    assert "ClientConnectorError" in caplog.text
    assert "X-EmoVoice-Signature" not in down.requests[0][1]  # no secret configured: unsigned


async def test_run_sends_only_configured_event_types_from_the_bus() -> None:
    receiver = Receiver()
    server = await serve(receiver)
    bus = EventBus()
    sender = WebhookSender(WebhookConfig(url=str(server.make_url("/hook")), secret=SECRET,
                                         events=["escalation.raised", "call.ended"]))
    bus.add_sink(sender.sink)
    task = asyncio.create_task(sender.run())
    bus.publish(bus.make_event("score", "c1", "customer", probs={}))
    bus.publish(raised_event(bus))
    bus.publish(bus.make_event("escalation.cleared", "c1", "customer", at=9.0, negative_smoothed=0.2, duration_s=4))
    bus.publish(bus.make_event("call.ended", "c1", "customer", reason="hangup", summary={}))
    for _ in range(200):
        if len(receiver.requests) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await server.close()
    assert [json.loads(r[2])["type"] for r in receiver.requests] == ["escalation.raised", "call.ended"]


def test_sign_matches_openssl() -> None:
    """printf '1700000000.{}' | openssl dgst -sha256 -hmac key"""
    assert sign("key", "1700000000", b"{}") == "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"


async def test_drain_at_shutdown_sends_what_is_queued_and_gives_up_in_time() -> None:
    receiver = Receiver()
    server = await serve(receiver)
    bus = EventBus()
    sender = WebhookSender(WebhookConfig(url=str(server.make_url("/hook")), events=["escalation.raised"]))
    task = asyncio.create_task(sender.run())
    for _ in range(5):
        sender.sink(raised_event(bus))
    assert await sender.drain(5.0)  # returns once all five were accepted
    assert len(receiver.requests) == 5
    await server.close()  # the receiver is gone: a queued event cannot be delivered
    sender.sink(raised_event(bus))
    t0 = time.monotonic()
    assert not await sender.drain(0.3)
    assert time.monotonic() - t0 < 1.0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
