"""AMI client helpers (the client itself is tested against a real Asterisk in tests/pbx/test_ami.py)."""
from __future__ import annotations

import pytest

from emovoice_daemon.ingest.ami import agent_id, decode, encode


@pytest.mark.parametrize(("member", "agent"), [("1001", "1001"), ("Agent Smith", "Agent Smith"),
                                               ("PJSIP/1001", "1001"), ("Local/1002@agents/n", "1002"),
                                               ("Local/1002@agents", "1002")])
def test_agent_id_is_the_member_name_or_the_interface_extension(member: str, agent: str) -> None:
    assert agent_id(member) == agent


def test_messages_round_trip_and_values_may_hold_colons() -> None:
    wire = encode({"Action": "Setvar", "Channel": "PJSIP/5551234-00000001", "Value": "customer:alert"})
    assert wire.endswith(b"\r\n\r\n")
    assert decode(wire) == {"Action": "Setvar", "Channel": "PJSIP/5551234-00000001", "Value": "customer:alert"}
