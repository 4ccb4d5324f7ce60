"""The harness itself: a private Asterisk boots with the shipped snippets, on loopback, and goes away."""
from __future__ import annotations

import socket

from .asterisk import Asterisk, snippet


def test_private_asterisk_loads_shipped_snippets_on_loopback_and_stops(asterisk: Asterisk) -> None:
    asterisk.start({"extensions.conf": snippet("extensions.conf"),
                    "pjsip.conf": asterisk.pjsip_conf(),
                    "ari.conf": snippet("ari.conf")})
    assert "Asterisk 22." in asterisk.cli("core show version")
    assert "emovoice-audiosocket" in asterisk.cli("dialplan show emovoice-audiosocket")
    assert "Endpoint:  emovoice" in asterisk.cli("pjsip show endpoint emovoice")
    assert f"127.0.0.1:{asterisk.sip_port}" in asterisk.cli("pjsip show transports")
    with socket.create_connection(("127.0.0.1", asterisk.ami_port), timeout=10) as ami:
        assert ami.recv(100).startswith(b"Asterisk Call Manager/")
    asterisk.stop()
    assert asterisk.proc is not None and asterisk.proc.poll() is not None
