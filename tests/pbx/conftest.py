"""Fixtures for the real-Asterisk tests: a private Asterisk per test (see asterisk.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .asterisk import Asterisk, ensure_installed


@pytest.fixture(scope="session", autouse=True)
def asterisk_installed() -> None:
    """Install the shared Asterisk once per session (skips when ../shared is absent)."""
    ensure_installed()


@pytest.fixture
def asterisk(tmp_path: Path) -> Iterator[Asterisk]:
    """A private Asterisk with its ports chosen, not started: ``asterisk.start(files)``; stopped afterwards."""
    instance = Asterisk(tmp_path / "asterisk")
    try:
        yield instance
    finally:
        instance.stop()
