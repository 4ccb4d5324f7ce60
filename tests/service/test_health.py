"""/health says degraded, and why, while events are being lost, the model fails or windows are skipped for
overload; the metrics gauge and systemd's STATUS line agree; it comes back to ok after."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from bench.loadgen import PeerResult, healthy, voiced_audio
from emovoice_daemon.config import parse_config
from emovoice_daemon.outputs import metrics
from emovoice_daemon.service import lifecycle
from emovoice_daemon.service.daemon import Daemon
from tests.scoring.conftest import FakeClassifier
from tests.service.conftest import TOKEN, config_text


async def started(tmp_path: Path, classifier: FakeClassifier, extra: str = "") -> Daemon:
    daemon = Daemon(parse_config(config_text(tmp_path, extra)), classifier=classifier)
    await daemon.start()
    return daemon


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = await started(tmp_path, FakeClassifier())
    yield daemon
    await daemon.stop()


async def health(daemon: Daemon) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{daemon.api_address}/health") as resp:
            assert resp.status == 200
            return await resp.json()


async def gauge(daemon: Daemon, reason: str) -> float:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.get(f"http://{daemon.api_address}/metrics") as resp:
            text = await resp.text()
    line = next(line for line in text.splitlines() if line.startswith(f'emovoice_health_degraded{{reason="{reason}"}}'))
    return float(line.split()[-1])


async def until(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``await predicate()`` holds."""
    started_at = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)
    return time.monotonic() - started_at


async def call(daemon: Daemon, seconds: float = 3.0, speed: float = 4.0) -> PeerResult:
    """A healthy call, returned once its leg has ended (every window answered)."""
    port = int(daemon.audiosocket.address.rsplit(":", 1)[1])
    result = await healthy("127.0.0.1", port, voiced_audio(seconds, seed=int(seconds * 10)), speed=speed)
    async with asyncio.timeout(30):
        while daemon.calls.legs:
            await asyncio.sleep(0.05)
    return result


async def test_disk_full_is_degraded_at_once_nothing_is_lost_and_ok_after(
        fast: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await health(fast))["status"] == "ok"
    real_write, log_fd = os.write, fast.event_log._fd

    def enospc_on_the_log(fd: int, data: bytes) -> int:
        if fd == log_fd:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", enospc_on_the_log)
    during = await call(fast)
    report = await health(fast)
    assert report["status"] == "degraded" and "No space left on device" in report["reasons"]["eventlog"]
    assert await gauge(fast, "eventlog") == 1.0
    assert "degraded: cannot write the event log" in lifecycle.status_line(fast)
    monkeypatch.setattr(os, "write", real_write)
    assert await until(lambda: _status_is(fast, "ok"), 5) < 3  # the monitor's next tick writes the backlog
    assert await gauge(fast, "eventlog") == 0.0 and "degraded" not in lifecycle.status_line(fast)
    events = [json.loads(line) for line in Path(fast.config.events.log_path).read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none lost, in order
    assert {e["type"] for e in events if e["call_id"] == during.call_id} >= {"call.started", "score", "call.ended"}


async def _status_is(daemon: Daemon, status: str) -> bool:
    return (await health(daemon))["status"] == status


async def test_model_errors_are_degraded_until_the_period_passes(tmp_path: Path) -> None:
    daemon = await started(tmp_path, FakeClassifier(fail=True), "service: {health_window_s: 2}\n")
    try:
        await call(daemon)
        report = await health(daemon)
        assert report["status"] == "degraded" and "model failed on" in report["reasons"]["model_errors"]
        assert await gauge(daemon, "model_errors") == 1.0
        await until(lambda: _status_is(daemon, "ok"), 10)
    finally:
        await daemon.stop()


async def test_overload_beyond_the_threshold_is_degraded(tmp_path: Path) -> None:
    daemon = await started(tmp_path, FakeClassifier(delay_s=1.5),
                           "engine: {max_batch: 1, max_lag_s: 0.5}\nservice: {health_window_s: 30}\n")
    try:
        await asyncio.gather(*(call(daemon, seconds=6, speed=2.0) for _ in range(4)))
        report = await health(daemon)
        assert report["status"] == "degraded" and "skipped for overload" in report["reasons"]["overload"], report
        assert await gauge(daemon, "overload") == 1.0
    finally:
        await daemon.stop()


async def test_a_few_overloaded_windows_are_not_degraded(fast: Daemon) -> None:
    fast.engine.outcomes.update(scored=200, overload=5)  # 2.4 %, under the 5 % default
    assert (await health(fast))["status"] == "ok"


async def test_a_worker_process_overloaded_makes_the_daemon_degraded(fast: Daemon) -> None:
    """Windows that worker processes report (their metrics snapshot) count like the main engine's."""
    try:
        fast.health_monitor.tick()
        metrics.EXPOSED.update("test-worker", [("emovoice_windows_total", {"outcome": "scored"}, 50.0),
                                               ("emovoice_windows_total", {"outcome": "overload"}, 50.0)])
        report = await health(fast)
        assert report["status"] == "degraded" and report["reasons"]["overload"].startswith("50 of 100 windows")
    finally:
        metrics.EXPOSED.update("test-worker", [])


async def test_nats_down_at_start_is_logged_at_once_and_degraded_until_it_is_up(tmp_path: Path, caplog) -> None:
    """Real nats-server, started only after the daemon: the failing first connection is one error line, /health
    says jetstream until the daemon has connected, and the events of the meantime reach the stream."""
    from tests.support.nats_servers import NatsNode, ids_in_stream

    node = NatsNode("late", tmp_path / "nats")  # ports chosen, nothing listening yet
    daemon = await started(tmp_path, FakeClassifier(), f"jetstream: {{enabled: true, servers: ['{node.url}']}}")
    try:
        await until(lambda: _async(lambda: "nats: cannot connect to" in caplog.text), 20)
        assert caplog.text.count("nats: cannot connect to") == 1
        reasons = (await health(daemon))["reasons"]
        assert "not connected to NATS" in reasons["jetstream"] and await gauge(daemon, "jetstream") == 1
        await call(daemon)
        await asyncio.to_thread(node.start)
        await until(lambda: _async(lambda: daemon.jetstream.buffered == 0), 30)
        assert (await health(daemon))["status"] == "ok"
        logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
        assert len(await ids_in_stream([node.url], "EMOVOICE")) == len(logged)
    finally:
        await daemon.stop()
        node.stop()


async def _async(check) -> bool:  # type: ignore[no-untyped-def]
    return check()
