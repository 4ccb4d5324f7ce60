from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp.test_utils import TestServer

from emovoice_daemon.config import AriConfig, CuesConfig, RtpConfig
from emovoice_daemon.ingest.ari import AriController
from emovoice_daemon.ingest.rtp import RtpReceiver
from emovoice_daemon.judgement.cues import CueTracker
from emovoice_daemon.outputs.events import EventBus

from .captures import shared_file
from .fake_ari import FakeAri
from .fakes import RecordingCalls

CALL = "1700000000.7"


async def until(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in shared_file(name).read_text().splitlines() if line.strip()]


async def test_fake_replays_the_real_rest_exchange_byte_for_byte() -> None:
    captured = _load("scenarios/ari_rest_ulaw.jsonl")
    fake = FakeAri(app="probe", user="test", password="test")
    fake.created = iter(["2026-11-22T22:00:11.173+0000", "2026-11-22T22:00:11.175+0000",
                         "2026-11-22T22:00:11.177+0000", "2026-11-22T22:00:11.178+0000"]).__next__
    fake.pointers = lambda: "0x7fb2a000efa0"
    fake.rtp_port = lambda: 20002
    server = TestServer(fake.build())
    await server.start_server()
    try:
        await fake.start_call("1795384811.30", "Local/playlong@probe-0000000c;1", caller="")
        async with _client() as session:
            for req in captured:
                url = server.make_url("/ari" + req["path"])
                async with session.request(req["method"], url, params={**req["params"], "api_key": "test:test"}) as r:
                    assert r.status == req["status"]
                    text = await r.text()
                    assert (json.loads(text) if text else "") == req["body"]
                    if text:  # same bytes as Asterisk: JSON with Asterisk's key order
                        assert list(json.loads(text)) == list(req["body"])
    finally:
        await server.close()
    assert [r["path"] for r in fake.requests] == [r["path"] for r in captured]


async def test_fake_emits_the_real_event_sequence_for_the_same_session() -> None:
    captured = [e for e in _load("scenarios/ari_events.jsonl") if e["application"] == "probe"]
    setup = [(e["type"], (e.get("channel") or e.get("peer") or {}).get("id")) for e in captured[:9]]
    fake = FakeAri(app="probe")
    await fake.start_call("1795384811.30", "Local/playlong@probe-0000000c;1")
    server = TestServer(fake.build())
    await server.start_server()
    try:
        async with _client() as s:
            base, auth = server.make_url("/ari"), {"api_key": "emovoice:secret"}
            await s.post(f"{base}/channels/1795384811.30/snoop", params={**auth, "spy": "in", "app": "probe",
                                                                         "snoopId": "snoop-ulaw"})
            await s.post(f"{base}/channels/externalMedia", params={**auth, "app": "probe", "format": "ulaw",
                                                                   "external_host": "127.0.0.1:40000",
                                                                   "channelId": "em-ulaw"})
            await s.post(f"{base}/bridges", params={**auth, "type": "mixing", "bridgeId": "br-ulaw"})
            await s.post(f"{base}/bridges/br-ulaw/addChannel", params={**auth, "channel": "snoop-ulaw,em-ulaw"})
    finally:
        await server.close()
    got = [(e["type"], (e.get("channel") or e.get("peer") or {}).get("id")) for e in fake.events]
    assert got[:9] == setup
    for mine, real in zip(fake.events, captured[:9]):
        assert list(mine) == list(real)  # same keys in the same order
        chan_key = "channel" if "channel" in real else "peer"
        assert list(mine[chan_key]) == list(real[chan_key])


def _client():
    import aiohttp
    return aiohttp.ClientSession()


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeAri, TestServer, RtpReceiver]]:
    fake = FakeAri()
    server = TestServer(fake.build())
    await server.start_server()
    rtp = RtpReceiver(timeout_s=2.0)
    await rtp.start("127.0.0.1", 0)
    yield fake, server, rtp
    await rtp.stop()
    await server.close()


@asynccontextmanager
async def connected(ctl: AriController) -> AsyncIterator[AriController]:
    """Start the controller, wait until its event WebSocket is up, and stop it on the way out."""
    await ctl.start()
    try:
        await asyncio.wait_for(ctl.connected.wait(), 5)
        yield ctl
    finally:
        await ctl.stop()


def _controller(server: TestServer, rtp: RtpReceiver, calls: RecordingCalls, cues: CueTracker | None = None,
                **over: Any) -> AriController:
    port = rtp.address[1]
    cfg = AriConfig(enabled=True, url=str(server.make_url("/ari")), password="secret", format="ulaw", **over)
    return AriController(cfg, RtpConfig(host="127.0.0.1", port=port), calls, rtp, cues)  # type: ignore[arg-type]


async def test_taps_both_directions_scores_rtp_and_tears_down(rig, ulaw_packets: list[bytes]) -> None:
    fake, server, rtp = rig
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls)
    async with connected(ctl):
        await fake.start_call(CALL, args=["agent=1001", "queue=billing"])
        await until(lambda: any(r["path"] == f"/channels/{CALL}/continue" for r in fake.requests))
        snoops = [r["params"] for r in fake.requests if r["path"].endswith("/snoop")]
        assert [p["spy"] for p in snoops] == ["in", "out"]
        assert {r["params"].get("format") for r in fake.requests if r["path"] == "/channels/externalMedia"} == {"ulaw"}
        customer, agent = calls.legs[f"{CALL}:customer"], calls.legs[f"{CALL}:agent"]
        assert customer.meta["agent"] == "1001" and customer.meta["caller"] == "5551234" and customer.source == "ari"
        bridges = [b["channels"] for b in fake.bridges.values()]
        assert sorted(map(sorted, bridges)) == sorted(
            [[f"emovoice-{r}-{CALL}-media", f"emovoice-{r}-{CALL}-snoop"] for r in ("agent", "customer")])
        fake.send_rtp(f"emovoice-customer-{CALL}-media", ulaw_packets[:50])
        fake.send_rtp(f"emovoice-agent-{CALL}-media", ulaw_packets[100:120])
        await until(lambda: len(customer.audio) >= 48 * 160 and len(agent.audio) >= 18 * 160)
        await fake.hangup(CALL)
        await until(lambda: customer.ended and agent.ended)
        assert customer.ended == agent.ended == "hangup"
        await until(lambda: not fake.bridges and not any(c.startswith("emovoice-") for c in fake.channels))
        assert ctl.taps == {}


async def test_own_channels_entering_stasis_are_not_tapped(rig) -> None:
    fake, server, rtp = rig
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls, directions=["in"])
    async with connected(ctl):
        await fake.start_call(CALL)
        await until(lambda: any(r["path"].endswith("/continue") for r in fake.requests))
        await asyncio.sleep(0.1)
        assert list(calls.legs) == [f"{CALL}:customer"]
        assert sum(r["path"].endswith("/snoop") for r in fake.requests) == 1


async def test_failed_setup_still_continues_the_call_and_cleans_up(rig) -> None:
    fake, server, rtp = rig
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls)
    async with connected(ctl):
        fake.fail_next["/bridges"] = 500
        await fake.start_call(CALL)
        await until(lambda: calls.legs.get(f"{CALL}:customer") and calls.legs[f"{CALL}:customer"].ended)
        assert calls.legs[f"{CALL}:customer"].ended == "error"
        assert any(r["path"] == f"/channels/{CALL}/continue" and r["status"] == 204 for r in fake.requests)
        await until(lambda: not any(c.startswith("emovoice-") for c in fake.channels))
        assert CALL in fake.channels  # the call itself is untouched


async def test_orphans_are_deleted_on_connect_and_reconnect_recovers(rig) -> None:
    fake, server, rtp = rig
    fake.channels["emovoice-customer-old-snoop"] = fake._channel("emovoice-customer-old-snoop", "Snoop/x", "Up", {})
    fake.channels["PJSIP/other-1"] = fake._channel("PJSIP/other-1", "PJSIP/other", "Up", {})
    fake.bridges["emovoice-customer-old-bridge"] = {"id": "emovoice-customer-old-bridge", "channels": []}
    fake.bridges["someone-elses"] = {"id": "someone-elses", "channels": []}
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls, reconnect_max_s=0.2)
    async with connected(ctl):
        assert set(fake.channels) == {"PJSIP/other-1"} and set(fake.bridges) == {"someone-elses"}
        await fake.start_call(CALL)
        await until(lambda: len(calls.legs) == 2 and not ctl._jobs)
        await fake.drop_connections()
        await until(lambda: not ctl.connected.is_set())
        del fake.channels[CALL]  # the caller hung up while we were disconnected
        await asyncio.wait_for(ctl.connected.wait(), 5)
        assert all(leg.ended == "hangup" for leg in calls.legs.values())
        await until(lambda: not any(c.startswith("emovoice-") for c in fake.channels))
        assert not any(b.startswith("emovoice-") for b in fake.bridges)


async def test_wrong_password_keeps_retrying_without_crashing(rig) -> None:
    fake, server, rtp = rig
    ctl = _controller(server, rtp, RecordingCalls(), reconnect_max_s=0.1)
    ctl._password = "wrong"
    await ctl.start()
    try:
        await asyncio.sleep(0.5)
        assert not ctl.connected.is_set() and not ctl._task.done()  # type: ignore[union-attr]
    finally:
        await ctl.stop()


async def test_rtp_stopping_ends_the_call(rig, ulaw_packets: list[bytes]) -> None:
    fake, server, rtp = rig
    rtp.timeout_s = 0.3
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls, directions=["in"])
    async with connected(ctl):
        await fake.start_call(CALL)
        await until(lambda: f"{CALL}:customer" in calls.legs and not ctl._jobs)
        fake.send_rtp(f"emovoice-customer-{CALL}-media", ulaw_packets[:5])
        await until(lambda: calls.legs[f"{CALL}:customer"].ended == "idle_timeout")
        await until(lambda: not any(c.startswith("emovoice-") for c in fake.channels))


async def test_call_cues_reach_both_legs_call_ended_summary(rig, ulaw_packets: list[bytes]) -> None:
    fake, server, rtp = rig
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls, CueTracker(CuesConfig(enabled=True), -45.0, EventBus()))
    async with connected(ctl):
        await fake.start_call(CALL)
        await until(lambda: f"{CALL}:customer" in calls.legs and f"{CALL}:agent" in calls.legs)
        customer, agent = calls.legs[f"{CALL}:customer"], calls.legs[f"{CALL}:agent"]
        await until(lambda: all(t.source for t in ctl.taps[CALL].legs))
        for i in range(0, 150, 25):  # in bursts the receive buffer holds
            fake.send_rtp(f"emovoice-customer-{CALL}-media", ulaw_packets[i:i + 25])
            fake.send_rtp(f"emovoice-agent-{CALL}-media", ulaw_packets[i:i + 25])
            await asyncio.sleep(0.05)
        await until(lambda: len(customer.audio) >= 140 * 160 and len(agent.audio) >= 140 * 160)
        await fake.hangup(CALL)
        await until(lambda: customer.ended and agent.ended)
        for leg in (customer, agent):
            cues = leg.extra["cues"]
            assert cues["talk_over_s"] > 1.0  # the same speech on both legs overlaps throughout
            assert set(cues["pace_per_min"]) == {"customer", "agent"}


async def test_snoop_entering_stasis_after_its_post_returned_is_still_bridged(rig) -> None:
    """A loaded Asterisk starts the snoop's app after answering the POST; bridging it at once got 422."""
    fake, server, rtp = rig
    fake.snoop_enters_after_s = 0.3
    calls = RecordingCalls()
    ctl = _controller(server, rtp, calls)
    async with connected(ctl):
        await fake.start_call(CALL)
        await until(lambda: any(r["path"] == f"/channels/{CALL}/continue" for r in fake.requests))
        assert sorted(map(sorted, (b["channels"] for b in fake.bridges.values()))) == sorted(
            [[f"emovoice-{r}-{CALL}-media", f"emovoice-{r}-{CALL}-snoop"] for r in ("agent", "customer")])
        assert not any(leg.ended for leg in calls.legs.values()) and len(calls.legs) == 2
