"""Fixtures of the operations tests: a fake systemd notify socket, an in-process daemon."""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np
import pytest
import yaml

from bench.loadgen import FakeSystemd
from emovoice_daemon.config import parse_config
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.tools.simulate import audiosocket_frames


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    """Bound in a short temp dir: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="evsd") as tmp:
        fake = FakeSystemd(Path(tmp) / "notify")
        try:
            yield fake
        finally:
            fake.close()


async def open_call(port: int, call_id: str, pcm: np.ndarray) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, send a whole call's frames at once and keep the connection open (the caller closes it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(audiosocket_frames(call_id, pcm)))
    await writer.drain()
    return reader, writer


TOKEN = "s3cret-token"


def config_text(tmp_path: Path, extra: str = "") -> str:
    """The test daemon's config; ``extra`` YAML sections are merged into it (a section may appear only once)."""
    config = {"audiosocket": {"port": 0}, "api": {"port": 0, "token": TOKEN},
              "events": {"log_path": str(tmp_path / "events.jsonl")}, "history": {"path": str(tmp_path / "h.sqlite3")}}
    for section, values in (yaml.safe_load(extra) or {}).items():
        config[section] = {**config.get(section, {}), **values}
    return yaml.safe_dump(config)


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Daemon]:
    """An in-process daemon on ephemeral loopback ports; ``extra`` config text via indirect parametrisation."""
    daemon = Daemon(parse_config(config_text(tmp_path, getattr(request, "param", ""))))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
