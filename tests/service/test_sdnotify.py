"""systemd notify protocol: READY, STATUS, periodic WATCHDOG, STOPPING, and no pings from a blocked loop."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from bench.loadgen import FakeSystemd
from emovoice_daemon.service.sdnotify import Notifier
from tests.conftest import start_daemon, stop_daemon


def test_daemon_reports_ready_watchdog_and_stopping(tmp_path: Path, fake_systemd: FakeSystemd) -> None:
    daemon = start_daemon(tmp_path, env=fake_systemd.env(watchdog_s=0.4))
    try:
        _, ready = fake_systemd.wait_for(lambda m: m.get("READY") == "1", timeout=5)
        assert ready["STATUS"].startswith("serving 0 live legs")
        fake_systemd.receive(1.5)
        pings = [t for t, m in fake_systemd.messages if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 5  # every 0.2 s (half of WatchdogSec)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 0.4
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
        _, stopping = fake_systemd.wait_for(lambda m: m.get("STOPPING") == "1", timeout=2)
        assert stopping["STATUS"].startswith("draining")
    finally:
        stop_daemon(daemon)


def test_no_watchdog_without_watchdog_usec(tmp_path: Path, fake_systemd: FakeSystemd) -> None:
    daemon = start_daemon(tmp_path, env=fake_systemd.env())
    try:
        fake_systemd.wait_for(lambda m: m.get("READY") == "1", timeout=5)
        fake_systemd.receive(0.6)
        assert not [m for _, m in fake_systemd.messages if "WATCHDOG" in m]
    finally:
        stop_daemon(daemon)


async def test_watchdog_stops_while_the_event_loop_is_blocked(fake_systemd: FakeSystemd) -> None:
    notify = Notifier(str(fake_systemd.path), watchdog_s=0.2)
    task = asyncio.create_task(notify.watchdog(lambda: "ok"))
    try:
        listening = asyncio.create_task(asyncio.to_thread(fake_systemd.receive, 2.0))  # a thread: not blocked
        await asyncio.sleep(0.5)
        blocked_at = time.monotonic()
        time.sleep(1.0)  # the event loop is blocked
        resumed_at = time.monotonic()
        await listening
    finally:
        task.cancel()
        notify.close()
    pings = [t for t, m in fake_systemd.messages if m.get("WATCHDOG") == "1"]
    assert len([t for t in pings if t < blocked_at]) >= 3  # every 0.1 s while the loop ran
    assert [t for t in pings if blocked_at + 0.05 < t < resumed_at] == []  # none while it was blocked
    assert len([t for t in pings if t > resumed_at]) >= 3  # and again once it runs


def test_abstract_socket_address() -> None:
    import socket

    name = f"emovoice-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notify = Notifier("@" + name)
        assert notify.ready("up")
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        notify.close()


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "2000000"}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
])
def test_watchdog_period_from_environment(monkeypatch: pytest.MonkeyPatch, env: dict, expected: float | None) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Notifier.from_env().watchdog_s == expected


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify = Notifier.from_env()
    assert not notify.enabled and notify.ready("x") is False


def test_unreachable_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notify = Notifier(str(tmp_path / "missing"))
    assert notify.send(STATUS="x") is False
    assert "sd_notify" in caplog.text
