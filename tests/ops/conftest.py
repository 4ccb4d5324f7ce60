"""Fixtures of the operations tests: a fake systemd notify socket."""
from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from emovoice_daemon.simulate import audiosocket_frames


class FakeSystemd:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``; records (time, fields)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_s:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    def receive(self, timeout: float) -> list[tuple[float, dict[str, str]]]:
        """Read every datagram arriving within ``timeout`` s (or already queued); returns the new ones."""
        new = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            new.append((time.monotonic(), fields))
        self.messages += new
        return new

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float) -> dict[str, str]:
        """The first message (already received or arriving within ``timeout``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for _, fields in self.messages[checked:]:
                if predicate(fields):
                    return fields
            checked = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notify message in {timeout} s; got {self.messages}")
            self.receive(min(left, 0.2))


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    """Bound in a short temp dir: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="evsd") as tmp:
        fake = FakeSystemd(Path(tmp) / "notify")
        try:
            yield fake
        finally:
            fake.sock.close()


def windows_due(samples: int, window: int = 24000, hop: int = 8000) -> int:
    """Windows the engine scores for a leg of ``samples`` 8 kHz samples (default 3 s window, 1 s hop)."""
    if samples >= window:
        return (samples - window) // hop + 1
    return 1 if samples >= 8000 else 0


async def open_call(port: int, call_id: str, pcm: np.ndarray) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, send a whole call's frames at once and keep the connection open (the caller closes it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(audiosocket_frames(call_id, pcm)))
    await writer.drain()
    return reader, writer
