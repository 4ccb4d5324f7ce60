"""kill -9 mid-call: after a restart the event log has only whole lines and the call history is consistent."""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
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
                                and any(e["call_id"] == live_id for e in ev))
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
        lost = history_of(second, live_id)
        assert lost["live"] is False and lost["legs"][0]["reason"] == "lost"  # not shown as a live call forever
        finished = history_of(second, done.call_id)
        assert finished["legs"][0]["reason"] == "eof" and finished["legs"][0]["summary"]["windows_scored"] >= 1
        assert [e["call_id"] for e in second.events() if e["type"] == "call.started"] == [done.call_id, live_id]
    finally:
        stop_daemon(second)
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
