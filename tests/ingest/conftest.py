"""Fixtures for the telephony tests: the real Asterisk captures in ../shared."""
from __future__ import annotations

import pytest

from .captures import length_prefixed, shared_file


@pytest.fixture
def ulaw_packets() -> list[bytes]:
    return length_prefixed(shared_file("externalmedia_ulaw.rtp"))


@pytest.fixture
def slin16_packets() -> list[bytes]:
    return length_prefixed(shared_file("externalmedia_slin16.rtp"))
