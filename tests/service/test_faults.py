"""Faults under load: abrupt disconnects, slow-loris, malformed and oversize frames and a peer that never reads
cost the healthy calls no event, every leg ends, and the daemon's memory returns to where it was."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bench.loadgen import (
    MALFORMED,
    abrupt,
    healthy,
    malformed,
    never_reads,
    rss_bytes,
    slow_loris,
    unit_environment,
    voiced_audio,
    windows_due,
)
from emovoice_daemon.calls import Leg
from emovoice_daemon.ingest.audiosocket import Connection
from emovoice_daemon.scoring.models.loader import COMPACT_DIR
from emovoice_daemon.scoring import engine
from emovoice_daemon.scoring.resample import StreamResampler
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.tools.simulate import play_call
from tests.conftest import DaemonProcess, start_daemon, stop_daemon

IDLE_TIMEOUT_S = 2.0

# The leak and fd tests are about the daemon, not the model: the compact one keeps them quick and their bounds stable
# (the default encoder model allocates more and starts scoring later on a loaded machine).
COMPACT = {"path": str(COMPACT_DIR)}


def live_legs(daemon: DaemonProcess) -> int:
    return json.loads(daemon.get("/health")[1])["legs"]


def open_connections(daemon: DaemonProcess) -> int:
    """``emovoice_audiosocket_connections`` from the daemon's /metrics."""
    text = daemon.get("/metrics", daemon.token)[1].decode()
    return int(float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("emovoice_audiosocket_connections "))))


async def wait_until_none(count, daemon: DaemonProcess, what: str, timeout: float = 30) -> None:
    """Poll ``count(daemon)`` until it reads 0."""
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(count, daemon):
        assert time.monotonic() < deadline, f"{what} still open after {timeout} s"
        await asyncio.sleep(0.2)


async def wait_no_legs(daemon: DaemonProcess, timeout: float = 30) -> None:
    await wait_until_none(live_legs, daemon, "legs", timeout)


async def test_faults_cost_healthy_calls_no_event(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, {"audiosocket": {"idle_timeout_s": IDLE_TIMEOUT_S}, "engine": {"max_lag_s": 30.0}})
    try:
        host, port = "127.0.0.1", daemon.audiosocket_port
        limit = IDLE_TIMEOUT_S + 4
        results = await asyncio.gather(
            *(healthy(host, port, voiced_audio(5, seed=i), speed=2.0) for i in range(4)),
            abrupt(host, port, voiced_audio(5, seed=9), after_s=1.0),
            slow_loris(host, port, limit), never_reads(host, port, voiced_audio(2), limit),
            *(malformed(host, port, variant) for variant in MALFORMED))
        await wait_no_legs(daemon)
        events = daemon.events()
        by_call = {r.call_id: [e for e in events if e["call_id"] == r.call_id] for r in results}
        for r in results:
            if r.kind == "healthy":
                assert r.error == ""
                types = Counter(e["type"] for e in by_call[r.call_id] if not e["type"].startswith("escalation."))
                assert types == {"call.started": 1, "score": windows_due(r.samples), "call.ended": 1}, r
                assert by_call[r.call_id][-1]["reason"] == "eof"
            elif r.kind == "abrupt":
                assert by_call[r.call_id][-1]["reason"] == "eof"
            elif r.kind in ("slow_loris", "never_reads"):
                assert r.closed_after_s is not None and r.closed_after_s < IDLE_TIMEOUT_S + 1.5, r
                if r.kind == "never_reads":  # its second of audio made it a call; the slow loris never sent a frame
                    assert by_call[r.call_id][-1]["reason"] == "idle_timeout", r
                else:
                    assert by_call[r.call_id] == [], r
            else:
                assert r.closed_after_s is not None and r.closed_after_s < 1.0, r
                assert by_call[r.call_id] == [], r  # no audio frame: not a call
        assert daemon.proc.poll() is None and daemon.get("/health")[0] == 200
    finally:
        stop_daemon(daemon)


def live_objects() -> Counter[str]:
    """Instances of the per-call classes still reachable, and the asyncio tasks, by type name."""
    gc.collect()
    per_call = (Leg, Connection, StreamResampler, engine._Leg, engine._Window)
    counts = Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, per_call))
    counts["tasks"] = len(asyncio.all_tasks())
    return counts


async def test_nothing_per_call_is_left_behind(running: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest keeps every log record, and a record's args (the exception) pin the connection's frames
    monkeypatch.setattr(logging.getLogger("emovoice_daemon"), "propagate", False)
    port = int(running.audiosocket.address.rsplit(":", 1)[1])

    async def round_of_calls() -> None:
        results = await asyncio.gather(*(healthy("127.0.0.1", port, voiced_audio(4, seed=i), speed=4.0)
                                         for i in range(6)),
                                       abrupt("127.0.0.1", port, voiced_audio(4), after_s=1.0),
                                       malformed("127.0.0.1", port, "oversize"))
        assert [r.error for r in results] == [""] * len(results)
        while running.calls.legs:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # connection tasks finish after their leg

    await round_of_calls()
    before = live_objects()
    await round_of_calls()
    await round_of_calls()
    assert live_objects() == before
    assert running.engine.live_legs == 0 and not running.calls.legs
    assert running.notifier is None or not running.notifier.calls


async def test_rss_returns_to_baseline_after_calls(tmp_path: Path) -> None:
    """With the systemd unit's environment (allocator arenas, oneDNN cache) RSS settles after the calls."""
    daemon = start_daemon(tmp_path, {"engine": {"max_lag_s": 30.0}, "model": COMPACT}, env=unit_environment())
    try:
        async def round_of_calls() -> None:
            results = await asyncio.gather(*(healthy("127.0.0.1", daemon.audiosocket_port,
                                                     voiced_audio(4, seed=i), speed=4.0) for i in range(6)))
            assert not any(r.error for r in results)
            await wait_no_legs(daemon)

        for _ in range(2):  # warm-up: lazy imports, allocator arenas, batch shapes
            await round_of_calls()
        baseline = rss_bytes(daemon.proc.pid)
        for _ in range(4):
            await round_of_calls()
        grown = rss_bytes(daemon.proc.pid) - baseline
        assert grown < 16 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 24 calls"
    finally:
        stop_daemon(daemon)


async def test_more_connections_than_file_descriptors_leave_the_daemon_answering(tmp_path: Path) -> None:
    """Open-file limit 400 (setrlimit in the daemon's process), 600 idle connections: the daemon holds what its
    cap allows (400 - 128), refuses the rest with a few log lines, /health answers degraded; a call works after."""
    daemon = start_daemon(tmp_path, {"audiosocket": {"idle_timeout_s": 60.0}, "model": COMPACT}, nofile=400)
    idle: list[socket.socket] = []
    try:
        for _ in range(600):
            idle.append(socket.create_connection(("127.0.0.1", daemon.audiosocket_port), timeout=5))
        await asyncio.sleep(3)  # the daemon accepts what its cap allows
        status, body = await asyncio.to_thread(daemon.get, "/health")
        health = json.loads(body)
        assert status == 200 and health["status"] == "degraded", health
        assert "audiosocket.max_connections (272)" in health["reasons"]["connections"]
        assert await asyncio.to_thread(open_connections, daemon) == 272
        stderr = daemon.stderr_path.read_text()
        assert "out of system resource" not in stderr and "Traceback" not in stderr
        assert stderr.count("refusing connections") <= 2, stderr[-2000:]
    finally:
        for sock in idle:
            sock.close()
    try:
        # the daemon lets the closed connections go (a call arriving while they still count is refused by design)
        await wait_until_none(open_connections, daemon, "AudioSocket connections", 60)
        call_id = str(uuid.uuid4())
        await play_call("127.0.0.1", daemon.audiosocket_port, voiced_audio(3), call_id)
        daemon.wait_for(lambda ev: any(e["type"] == "call.ended" and e["call_id"] == call_id for e in ev))
    finally:
        stop_daemon(daemon)
