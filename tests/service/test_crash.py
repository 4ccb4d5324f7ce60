"""kill -9 mid-call: after a restart every call.started in the event log has exactly one call.ended (the restart
ends the killed run's live legs as ``lost``), events stay unique and ordered, and the call history agrees."""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.loadgen import healthy, voiced_audio
from tests.conftest import start_daemon, stop_daemon
from tests.service.conftest import open_call


def history_of(daemon, call_id: str) -> dict:
    status, body = daemon.get(f"/calls/{call_id}", token=daemon.token)
    assert status == 200, body
    return json.loads(body)


async def test_history_and_log_after_kill_9(tmp_path: Path) -> None:
    overrides = {"history": {"path": str(tmp_path / "history.sqlite3")}}
    first = start_daemon(tmp_path, overrides)
    try:
        done = await healthy("127.0.0.1", first.audiosocket_port, voiced_audio(3), speed=4.0)
        live_id = str(uuid.uuid4())
        _, writer = await open_call(first.audiosocket_port, live_id, voiced_audio(4))
        await asyncio.to_thread(first.wait_for, lambda ev: any(e["type"] == "call.ended" for e in ev)
                                and any(e["call_id"] == live_id and e["type"] == "score" for e in ev))
        deadline = time.monotonic() + 10
        while history_of(first, done.call_id)["live"] or not first.get(f"/calls/{live_id}", first.token)[0] == 200:
            assert time.monotonic() < deadline, "history never caught up"
            await asyncio.sleep(0.2)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        writer.close()
    finally:
        stop_daemon(first)
    second = start_daemon(tmp_path, overrides)
    try:
        events = await asyncio.to_thread(second.wait_for, lambda ev: any(
            e["type"] == "call.ended" and e["call_id"] == live_id for e in ev), 10)
        assert [e["call_id"] for e in events if e["type"] == "call.started"] == [done.call_id, live_id]
        ends = Counter(e["call_id"] for e in events if e["type"] == "call.ended")
        assert ends == {done.call_id: 1, live_id: 1}  # every call.started has exactly one call.ended
        ended = next(e for e in events if e["type"] == "call.ended" and e["call_id"] == live_id)
        before = [e for e in events if e["call_id"] == live_id and e is not ended]
        scores = [e for e in before if e["type"] == "score"]
        assert ended["reason"] == "lost" and ended["summary"]["windows_scored"] == len(scores) >= 1
        assert ended["summary"]["last_seen"] == before[-1]["ts"]
        assert ended["summary"]["duration_s"] == scores[-1]["window"]["end"]
        ids = [(e["boot"], e["seq"]) for e in events]
        assert ids == sorted(set(ids)) and len({e["boot"] for e in events}) == 2  # unique and ordered across boots
        deadline = time.monotonic() + 10
        while (lost := history_of(second, live_id))["legs"][0]["summary"] is None:
            assert time.monotonic() < deadline, "history never got the lost leg's summary"
            await asyncio.sleep(0.2)
        assert lost["live"] is False and lost["legs"][0]["reason"] == "lost"  # not shown as a live call forever
        assert lost["legs"][0]["ended"] == ended["summary"]["last_seen"]
        assert lost["legs"][0]["summary"]["windows_scored"] == len(scores)
        finished = history_of(second, done.call_id)
        assert finished["legs"][0]["reason"] == "eof" and finished["legs"][0]["summary"]["windows_scored"] >= 1
    finally:
        stop_daemon(second)
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
