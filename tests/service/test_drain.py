"""SIGTERM drain with a slow model: legs that hung up finish every window, live legs end as shutdown,
every leg gets exactly one call.ended, and nothing is logged at ERROR (no CancelledError tracebacks)."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bench.loadgen import voiced_audio, windows_due
from emovoice_daemon.config import parse_config
from emovoice_daemon.service import lifecycle
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.tools.simulate import audiosocket_frames
from tests.scoring.conftest import FakeClassifier
from tests.service.conftest import config_text

SECONDS = 8.0


async def slow_daemon(tmp_path: Path, delay_s: float) -> Daemon:
    daemon = Daemon(parse_config(config_text(tmp_path, "engine: {max_batch: 4, max_lag_s: 60}\n")),
                    classifier=FakeClassifier(delay_s=delay_s))
    await daemon.start()
    return daemon


def send_call(port: int, call_id: str, hang_up: bool) -> socket.socket:
    """A whole call's audio at once; the caller hangs up (EOF) or stays on the line."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"".join(audiosocket_frames(call_id, voiced_audio(SECONDS))))
    if hang_up:
        sock.shutdown(socket.SHUT_WR)
    return sock


async def calls_in_progress(daemon: Daemon, hung_up: int, live: int) -> tuple[list[str], list[str], list[socket.socket]]:
    """``hung_up`` legs whose caller is gone but whose windows are still queued, and ``live`` legs."""
    port = int(daemon.audiosocket.address.rsplit(":", 1)[1])
    gone, on = [str(uuid.uuid4()) for _ in range(hung_up)], [str(uuid.uuid4()) for _ in range(live)]
    socks = await asyncio.gather(*(asyncio.to_thread(send_call, port, c, c in gone) for c in gone + on))
    async with asyncio.timeout(20):  # all audio read: hung-up legs are ending, live ones hold 8 s
        while not (len(daemon.calls.legs) == hung_up + live
                   and all(leg.ended == (leg.call_id in gone) and leg.duration_s == SECONDS
                           for leg in daemon.calls.legs.values())):
            await asyncio.sleep(0.05)
    return gone, on, socks


def ended_of(daemon: Daemon) -> dict[str, list[dict]]:
    events = [json.loads(line) for line in Path(daemon.config.events.log_path).read_text().splitlines()]
    out: dict[str, list[dict]] = {}
    for e in events:
        if e["type"] == "call.ended":
            out.setdefault(e["call_id"], []).append(e)
    return out


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_drain_lets_hung_up_legs_finish_and_ends_live_ones(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    daemon = await slow_daemon(tmp_path, delay_s=0.4)
    gone, on, socks = await calls_in_progress(daemon, hung_up=4, live=2)
    assert await lifecycle.drain(daemon, 20.0)
    ended = ended_of(daemon)
    due = windows_due(int(SECONDS * 8000))
    for call_id in gone + on:
        assert len(ended[call_id]) == 1, call_id
        event = ended[call_id][0]
        assert event["reason"] == ("eof" if call_id in gone else "shutdown")
        summary = event["summary"]  # every window answered: scored, or skipped when a newer one was due first
        assert summary["windows_scored"] + summary["windows_skipped"] == due and summary["duration_s"] == SECONDS
        assert summary["windows_scored"] >= due - 2, summary
    assert errors(caplog) == []
    for sock in socks:
        sock.close()


async def test_past_the_deadline_every_leg_still_ends_once_with_every_window_answered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = await slow_daemon(tmp_path, delay_s=1.0)
    gone, on, socks = await calls_in_progress(daemon, hung_up=4, live=2)
    started = time.monotonic()
    await lifecycle.drain(daemon, 2.0)
    assert time.monotonic() - started < 4.0
    ended = ended_of(daemon)
    due = windows_due(int(SECONDS * 8000))
    assert Counter(len(v) for v in ended.values()) == {1: len(gone + on)}
    for call_id in gone + on:
        summary = ended[call_id][0]["summary"]
        assert summary["windows_scored"] + summary["windows_skipped"] == due
        assert summary["windows_skipped"] >= 1  # the model was too slow for the deadline: skipped, not lost
    assert [e for e in errors(caplog) if "drain" not in e] == []
    for sock in socks:
        sock.close()
