"""AMI (Asterisk Manager Interface) client: escalations into the PBX, calls bound to agents, listen-in.

One asyncio TCP connection, logged in as ``ami.username``, reconnecting with back-off. It reads:

- ``UserEvent`` ``EmoVoiceCall`` (extensions.conf ``[emovoice-call]``): ``Call`` is the call id on
  ``Channel``, the customer's channel;
- ``AgentConnect`` (app_queue): the queue member who answered that channel (a call not announced by
  a UserEvent, e.g. an ARI call, is known by its channel's unique id); the call is bound to the agent
  id taken from ``MemberName`` (see ``agent_id``), and the member's channel is remembered;
- ``ChanSpyStart`` with a PJSIP spyer (the ``channel originate PJSIP/emovoice application ChanSpy ...`` line
  of extensions.conf): the SIP leg's call id (from the spyer's SIP Call-ID, ``Getvar``) is on the spyee;
- ``Hangup``: the channel's calls are forgotten, and escalations of them no longer reach the PBX;
- after each (re)connect, ``Status`` of the live channels with their ``EMOVOICE_CALL`` and
  ``EMOVOICE_CUSTOMER`` variables, so calls that began while it was disconnected are known too.

It writes the escalation variables of ``channelvars`` (``EMOVOICE_ESCALATION_<ROLE>`` per role and
``EMOVOICE_ESCALATION``, the worst active) with ``Setvar`` on the call's channel, only those that changed and
at most once per ``ami.setvar_interval_s`` per call (AMI works on any channel, unlike ARI's variable call which
needs the channel in Stasis; an ARI call's id is its channel's unique id, which AMI accepts as a channel), and
``Originate`` for supervisor listen-in.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from emovoice_daemon.config import AmiConfig, read_secret
from emovoice_daemon.ingest.channelvars import CallEscalations
from emovoice_daemon.ingest.sipcallid import sip_call_id

log = logging.getLogger(__name__)

CALL_EVENT = "EmoVoiceCall"
CALL_VAR, CUSTOMER_VAR = "EMOVOICE_CALL", "EMOVOICE_CUSTOMER"  # set by extensions.conf [emovoice-call]
ACTION_TIMEOUT_S = 10.0
SIP_CALL_ID = "CHANNEL(pjsip,call-id)"
GONE_KEPT = 4096  # ids of hung-up calls remembered (escalations of them are not sent)
SPY_OPTIONS = {"listen": "qE", "whisper": "qwE"}  # q: no beep, E: end with the spied channel, w: talk to it


class AmiError(RuntimeError):
    """An action failed (refused, timed out, or no connection)."""


@dataclass
class CallChannels:
    """The PBX channels of one call: the customer's, and the agent's once a queue member answered."""

    customer: str
    agent: str = ""


@dataclass
class PbxState:
    """What the PBX was last told about one call's escalations, and the pending rate-limited update."""

    escalations: CallEscalations = field(default_factory=CallEscalations)
    last_sent: float = float("-inf")
    flush: asyncio.TimerHandle | None = None


def agent_id(member: str) -> str:
    """The agent id of a queue member: its name, or for one named after its interface the resource up to
    '@' or '/' (``PJSIP/1001`` -> ``1001``, ``Local/1001@agents/n`` -> ``1001``)."""
    return re.split("[@/]", member.split("/", 1)[1])[0] if "/" in member else member


def encode(fields: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\n"


def decode(block: bytes) -> dict[str, str]:
    """One AMI message (``Key: Value`` lines) as a dict; ``Variable: NAME=VALUE`` lines become key
    ``Variable:NAME``; another repeated key keeps its last value."""
    message = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep and key == "Variable" and "=" in value:
            key, value = f"Variable:{value.split('=', 1)[0]}", value.split("=", 1)[1]
        if sep:
            message[key] = value
    return message


class AmiClient:
    """The daemon's AMI connection; ``on_agent(call_id, agent)`` is called when a queue member answers."""

    def __init__(self, cfg: AmiConfig, on_agent: Callable[[str, str], None]) -> None:
        self.cfg, self.on_agent = cfg, on_agent
        self.secret = read_secret(cfg.secret, cfg.secret_file, "EMOVOICE_AMI_SECRET")
        self.calls: dict[str, CallChannels] = {}
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, str]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._listed: set[str] = set()  # calls seen in the current Status listing
        self._escalations: dict[str, PbxState] = {}
        self._gone: dict[str, None] = {}  # calls and unique ids whose channel hung up, oldest first

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ami")

    async def stop(self) -> None:
        for state in self._escalations.values():
            if state.flush is not None:
                state.flush.cancel()
        for task in [self._task, *self._jobs]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._task, *self._jobs] if t], return_exceptions=True)

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def _run(self) -> None:
        """Connect, log in, read; after any failure wait (0.5 s doubling to reconnect_max_s) and again."""
        delay = 0.5
        while True:
            try:
                await self._session()
                delay = 0.5
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AmiError) as exc:
                log.warning("AMI %s:%d: %s; retrying in %.1f s", self.cfg.host, self.cfg.port, exc or "closed", delay)
            finally:
                self._ready.clear()
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(AmiError("connection lost"))
                self._pending.clear()
                if self._writer is not None:
                    self._writer.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _session(self) -> None:
        reader, self._writer = await asyncio.open_connection(self.cfg.host, self.cfg.port)
        banner = await reader.readline()
        if not banner.startswith(b"Asterisk Call Manager/"):
            raise AmiError(f"not an AMI server (banner {banner[:60]!r})")
        reading = asyncio.create_task(self._read(reader))
        try:
            await self._send("Login", Username=self.cfg.username, Secret=self.secret, Events="call,agent,user")
            self._listed = set()
            await self._send("Status", Variables=f"{CALL_VAR},{CUSTOMER_VAR}")
            self._ready.set()
            log.info("AMI connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.cfg.username)
            await reading
        finally:
            reading.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = decode(await reader.readuntil(b"\r\n\r\n"))
            future = self._pending.pop(message.get("ActionID", ""), None)
            if "Response" in message and future is not None and not future.done():
                future.set_result(message)
            elif "Event" in message:
                self._event(message)

    async def _send(self, action: str, **fields: str) -> dict[str, str]:
        """Send an action and wait for its response; AmiError if it is refused or times out."""
        if self._writer is None or self._writer.is_closing():
            raise AmiError("not connected")
        action_id = str(next(self._ids))
        future = self._pending[action_id] = asyncio.get_running_loop().create_future()
        self._writer.write(encode({"Action": action, "ActionID": action_id, **fields}))
        try:
            reply = await asyncio.wait_for(future, ACTION_TIMEOUT_S)
        except asyncio.TimeoutError:
            self._pending.pop(action_id, None)
            raise AmiError(f"{action}: no response in {ACTION_TIMEOUT_S:.0f} s") from None
        if reply.get("Response") != "Success":
            raise AmiError(f"{action} refused: {reply.get('Message', reply.get('Response'))}")
        return reply

    async def action(self, action: str, **fields: str) -> dict[str, str]:
        """An action on the logged-in connection; AmiError when there is none."""
        if not self.connected:
            raise AmiError("not connected to AMI")
        return await self._send(action, **fields)

    def _event(self, event: dict[str, str]) -> None:
        kind, channel = event["Event"], event.get("Channel", "")
        if kind == "UserEvent" and event.get("UserEvent") == CALL_EVENT and event.get("Call") and channel:
            self.calls[event["Call"]] = CallChannels(channel)
            self._listed.add(event["Call"])
        elif kind == "AgentConnect":
            call_id = self._call_on(channel) or event.get("Uniqueid", "")  # else an ARI call: its channel's id
            if call_id:
                self.calls.setdefault(call_id, CallChannels(channel)).agent = event.get("DestChannel", "")
                agent = agent_id(event.get("MemberName") or event.get("Interface", ""))
                log.info("call %s answered by agent %s (queue %s)", call_id, agent, event.get("Queue", "?"))
                self.on_agent(call_id, agent)
        elif kind == "ChanSpyStart" and event.get("SpyerChannel", "").startswith("PJSIP/"):
            self._spawn(self._spied_sip_call(event["SpyerChannel"], event.get("SpyeeChannel", "")))
        elif kind == "Hangup":
            self._hung_up([*[c for c, chans in self.calls.items() if chans.customer == channel],
                           event.get("Uniqueid", "")])
        elif kind == "Status" and channel and event.get(f"Variable:{CUSTOMER_VAR}") == channel:
            call_id = event.get(f"Variable:{CALL_VAR}", "")
            self.calls.setdefault(call_id, CallChannels(channel))
            self._listed.add(call_id)
        elif kind == "StatusComplete":  # calls that ended while disconnected
            self.calls = {c: chans for c, chans in self.calls.items() if c in self._listed}

    def _call_on(self, customer_channel: str) -> str | None:
        return next((c for c, chans in self.calls.items() if chans.customer == customer_channel), None)

    def _hung_up(self, call_ids: list[str]) -> None:
        """The calls' channel is gone: forget them, drop their pending update, send them nothing more."""
        for call_id in filter(None, call_ids):
            self.calls.pop(call_id, None)
            state = self._escalations.pop(call_id, None)
            if state is not None and state.flush is not None:
                state.flush.cancel()
            self._gone[call_id] = None
        while len(self._gone) > GONE_KEPT:
            del self._gone[next(iter(self._gone))]

    async def _spied_sip_call(self, spyer: str, spyee: str) -> None:
        """A ChanSpy into a SIP channel: if it is EmoVoice's SIP leg, its call's channel is the spyee."""
        try:
            reply = await self.action("Getvar", Channel=spyer, Variable=SIP_CALL_ID)
        except AmiError as exc:
            log.debug("no SIP Call-ID of spying channel %s: %s", spyer, exc)
            return
        if reply.get("Value") and spyee:
            self.calls[sip_call_id(reply["Value"])] = CallChannels(spyee)

    def on_escalation(self, event: dict[str, Any]) -> None:
        """Bus hook: the call's escalation variables (channelvars), rate-limited per call."""
        if not event["type"].startswith("escalation."):
            return
        call_id = event["call_id"]
        if call_id in self._gone:
            log.debug("call %s hung up: %s not sent to the PBX", call_id, event["type"])
            return
        if call_id not in self._escalations and len(self._escalations) >= GONE_KEPT:  # ids AMI never saw hang up
            self._escalations.pop(next((c for c, st in self._escalations.items() if st.flush is None), ""), None)
        state = self._escalations.setdefault(call_id, PbxState())
        state.escalations.apply(event)
        if state.flush is None:  # else the pending update sends the latest values
            loop = asyncio.get_running_loop()
            wait = max(0.0, state.last_sent + self.cfg.setvar_interval_s - loop.time())
            state.flush = loop.call_later(wait, self._flush, call_id)

    def _flush(self, call_id: str) -> None:
        state = self._escalations[call_id]
        state.flush, state.last_sent = None, asyncio.get_running_loop().time()
        changes = state.escalations.changes()
        if changes:
            chans = self.calls.get(call_id)
            self._spawn(self._set_variables(chans.customer if chans else call_id, changes))  # ARI: unique id

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _set_variables(self, channel: str, values: dict[str, str]) -> None:
        for name, value in values.items():
            try:
                await self.action("Setvar", Channel=channel, Variable=name, Value=value)
                log.info("%s=%s set on %s", name, value, channel)
            except AmiError as exc:
                log.warning("%s=%s not set on %s: %s", name, value, channel, exc)

    async def listen_in(self, call_id: str, supervisor: str, mode: str) -> str:
        """Ring ``supervisor``'s phone (``ami.supervisors``) and connect it with ChanSpy to the call: ``listen``
        hears the customer's channel (both parties), ``whisper`` spies on the agent's channel and talks to the
        agent only. Returns the spied channel; KeyError for an unknown supervisor or call, AmiError otherwise."""
        dial = self.cfg.supervisors[supervisor]
        chans = self.calls[call_id]
        target = chans.customer if mode == "listen" else chans.agent
        if not target:
            raise AmiError(f"no agent channel known for call {call_id} (whisper needs a queue call)")
        await self.action("Originate", Channel=dial, Application="ChanSpy", Data=f"{target},{SPY_OPTIONS[mode]}",
                          CallerID=f"EmoVoice {mode} <{supervisor}>", Timeout="30000", Async="true")
        log.info("%s: %s on %s (call %s) via %s", supervisor, mode, target, call_id, dial)
        return target
