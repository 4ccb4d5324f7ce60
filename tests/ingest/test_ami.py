"""AMI client: wire format, agent ids, and the client against a fake AMI server (the real Asterisk: tests/pbx)."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest

from emovoice_daemon.config import AmiConfig
from emovoice_daemon.ingest.ami import AmiClient, agent_id, decode, encode


@pytest.mark.parametrize(("member", "agent"), [("1001", "1001"), ("Agent Smith", "Agent Smith"),
                                               ("PJSIP/1001", "1001"), ("Local/1002@agents/n", "1002"),
                                               ("Local/1002@agents", "1002")])
def test_agent_id_is_the_member_name_or_the_interface_extension(member: str, agent: str) -> None:
    assert agent_id(member) == agent


def test_messages_round_trip_and_values_may_hold_colons() -> None:
    wire = encode({"Action": "Setvar", "Channel": "PJSIP/5551234-00000001", "Value": "customer:alert"})
    assert wire.endswith(b"\r\n\r\n")
    assert decode(wire) == {"Action": "Setvar", "Channel": "PJSIP/5551234-00000001", "Value": "customer:alert"}


class FakeAmi:
    """An AMI server speaking the wire protocol: accepts the login, answers Status with one live call whose
    UserEvent the client missed, records every action, and lets the test send events."""

    def __init__(self) -> None:
        self.actions: list[dict[str, str]] = []
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        while True:
            action = decode(await reader.readuntil(b"\r\n\r\n"))
            self.actions.append(action)
            writer.write(encode({"Response": "Success", "ActionID": action["ActionID"]}))
            if action["Action"] == "Status":
                for chan, call in (("PJSIP/5551234-00000007", CALL), ("PJSIP/1001-00000008", CALL)):
                    writer.write(encode({"Event": "Status", "ActionID": action["ActionID"], "Channel": chan})[:-2]
                                 + f"Variable: EMOVOICE_CALL={call}\r\n".encode()
                                 + b"Variable: EMOVOICE_CUSTOMER=PJSIP/5551234-00000007\r\n\r\n")
                writer.write(encode({"Event": "StatusComplete", "ActionID": action["ActionID"]}))

    def event(self, **fields: str) -> None:
        self.writer.write(encode(fields))


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


CALL = "5b2c0b7e-1f3a-4c55-9d7e-0a1b2c3d4e5f"


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[tuple[FakeAmi, AmiClient, list[tuple[str, str]]]]:
    """A fake AMI server and a started client logged in to it; ``bound`` collects (call, agent) bindings."""
    fake = FakeAmi()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    bound: list[tuple[str, str]] = []
    client = AmiClient(AmiConfig(enabled=True, port=server.sockets[0].getsockname()[1], secret="s"),
                       lambda call, agent: bound.append((call, agent)))
    await client.start()
    try:
        await until(lambda: client.connected)
        yield fake, client, bound
    finally:
        await client.stop()
        server.close()


async def test_status_after_login_recovers_a_call_and_its_escalation_and_agent_reach_the_pbx() -> None:
    async with rig() as (fake, client, bound):
        await until(lambda: CALL in client.calls)
        assert client.calls[CALL].customer == "PJSIP/5551234-00000007"  # the agent's channel is not the customer's
        fake.event(Event="AgentConnect", Channel="PJSIP/5551234-00000007", DestChannel="PJSIP/1001-00000008",
                   MemberName="PJSIP/1001", Queue="support")
        await until(lambda: bound)
        assert bound == [(CALL, "1001")] and client.calls[CALL].agent == "PJSIP/1001-00000008"
        client.on_escalation({"type": "escalation.raised", "call_id": CALL, "role": "customer", "severity": "alert"})
        await until(lambda: fake.actions[-1]["Action"] == "Setvar")
        assert {k: fake.actions[-1][k] for k in ("Channel", "Variable", "Value")} == {
            "Channel": "PJSIP/5551234-00000007", "Variable": "EMOVOICE_ESCALATION", "Value": "customer:alert"}
        fake.event(Event="Hangup", Channel="PJSIP/5551234-00000007")
        await until(lambda: CALL not in client.calls)
    assert [a["Action"] for a in fake.actions[:2]] == ["Login", "Status"]


async def test_an_ari_call_answered_by_a_queue_member_is_bound_by_its_channel_unique_id() -> None:
    async with rig() as (fake, client, bound):
        fake.event(Event="AgentConnect", Channel="PJSIP/5551234-00000009", Uniqueid="1796314363.42",
                   DestChannel="Local/1001@agents-00000003;1", MemberName="1001", Queue="support")
        await until(lambda: bound)
        assert bound == [("1796314363.42", "1001")]
        assert client.calls["1796314363.42"].agent == "Local/1001@agents-00000003;1"


def setvars(fake: FakeAmi) -> list[tuple[str, str]]:
    return [(a["Variable"], a["Value"]) for a in fake.actions if a["Action"] == "Setvar"]


async def test_each_role_has_its_variable_the_worst_active_state_wins_and_updates_are_rate_limited() -> None:
    async with rig() as (fake, client, _):
        client.cfg.setvar_interval_s = 0.5
        await until(lambda: CALL in client.calls)
        escalation = {"call_id": CALL}
        client.on_escalation({**escalation, "type": "escalation.raised", "role": "customer", "severity": "alert"})
        await until(lambda: len(setvars(fake)) == 2)
        for _ in range(5):  # the agent's talk-over cue flaps: coalesced into one update
            client.on_escalation({**escalation, "type": "escalation.raised", "role": "agent", "severity": "watch",
                                  "reason": "agent_talk_over_upset_customer"})
            client.on_escalation({**escalation, "type": "escalation.cleared", "role": "agent",
                                  "reason": "agent_talk_over_upset_customer"})
        await until(lambda: len(setvars(fake)) == 3)
        await asyncio.sleep(0.7)
        assert setvars(fake) == [("EMOVOICE_ESCALATION_CUSTOMER", "alert"), ("EMOVOICE_ESCALATION", "customer:alert"),
                                 ("EMOVOICE_ESCALATION_AGENT", "cleared")]  # the customer's alert stands
        fake.event(Event="Hangup", Channel="PJSIP/5551234-00000007", Uniqueid="1796314363.7")
        await until(lambda: CALL not in client.calls)
        client.on_escalation({**escalation, "type": "escalation.cleared", "role": "customer"})
        await asyncio.sleep(0.7)
        assert len(setvars(fake)) == 3  # nothing to a channel that hung up
