"""SIP endpoint: the daemon as an extension that auto-answers and scores what it hears.

Signalling is pyVoIP 1.6.8 (threaded): it REGISTERs with ``server`` (or, with
``register: false``, only accepts INVITEs, answering to ``server``), answers with one G.711
codec and stops the call on BYE. Its own audio path decodes G.711 to 8-bit linear, so we
take the RTP packets before pyVoIP decodes them and run them through :mod:`.rtp`
(reordering, concealment, exact 16-bit G.711 decoding). Each call is one leg with the
configured role; pyVoIP's call threads hand everything to the event loop thread-safely.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

import pyVoIP
from pyVoIP.VoIP import CallState, VoIPCall, VoIPPhone
from pyVoIP.VoIP import VoIP as pyvoip_voip
from pyVoIP import RTP, SIP  # after pyVoIP.VoIP, which must be imported first (circular imports)

from emovoice_daemon.calls import CallManager, Leg
from emovoice_daemon.config import SipConfig, read_secret
from emovoice_daemon.ingest.rtp import FORMATS, RtpError, RtpStream, parse_rtp
from emovoice_daemon.ingest.sipcallid import CALL_HEADER, sip_call_id
from emovoice_daemon.outputs import metrics

log = logging.getLogger(__name__)

CODECS = {RTP.PayloadType.PCMU: "ulaw", RTP.PayloadType.PCMA: "alaw"}
POLL_S = 0.05


def split_hostport(value: str, default_port: int = 5060) -> tuple[str, int]:
    """``host[:port]`` -> (host, port)."""
    host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
    return host, int(port) if port else default_port


class SipEndpoint:
    """Runs a pyVoIP phone; every answered call becomes one scored leg."""

    def __init__(self, cfg: SipConfig, calls: CallManager, jitter_depth: int = 3) -> None:
        self.cfg = cfg
        self.calls = calls
        self.jitter_depth = jitter_depth
        self._allow = [ipaddress.ip_network(n, strict=False) for n in cfg.allow]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._phone: VoIPPhone | None = None
        self._running = False

    async def start(self) -> None:
        """Bind and (if ``server`` is a registrar and ``register`` is on) register."""
        if not self.cfg.server:
            raise ValueError("sip.server: the PBX (registrar or INVITE source) host[:port] is required")
        self._loop = asyncio.get_running_loop()
        host, port = split_hostport(self.cfg.server)
        password = read_secret(self.cfg.password, self.cfg.password_file, "EMOVOICE_SIP_PASSWORD")
        phone = VoIPPhone(host, port, self.cfg.username, password, myIP=self.cfg.host,
                          callCallback=self._on_call, sipPort=self.cfg.port,
                          rtpPortLow=self.cfg.rtp_port_low, rtpPortHigh=self.cfg.rtp_port_high)
        if not self.cfg.register:
            phone.sip.register = lambda: True  # accept-only: no REGISTER
        _answer_options(phone.sip)
        self._running = True
        await asyncio.to_thread(phone.start)
        self._phone = phone
        log.info("SIP endpoint on %s:%d (%s %s)", self.cfg.host, self.cfg.port,
                 "registered with" if self.cfg.register else "accepting INVITEs from", self.cfg.server)

    async def stop(self) -> None:
        """Hang up every call (legs end with ``shutdown``) and unregister."""
        self._running = False
        if self._phone:
            await asyncio.to_thread(self._phone.stop)

    # -- pyVoIP threads ------------------------------------------------------------------------
    def _on_call(self, call: VoIPCall) -> None:
        """pyVoIP's per-call thread: screen, answer, wait for the end, all while RTP flows to the loop."""
        assert self._loop is not None
        peer = call.request.headers["Via"][0]["address"][0]
        if not self._allowed(peer):
            log.warning("SIP INVITE via %s refused: not in sip.allow", peer)
            metrics.SIP_CALLS.labels("refused").inc()
            _deny(call)
            return
        fmt = self._choose_codec(call)
        if fmt is None:
            log.warning("SIP call from %s offers no G.711 codec; refused", peer)
            metrics.SIP_CALLS.labels("no_codec").inc()
            _deny(call)
            return
        meta = {"caller": _from_number(call.request), "peer": peer, "sip_call_id": call.call_id, "codec": fmt}
        leg, stream = asyncio.run_coroutine_threadsafe(self._open(call, fmt, meta), self._loop).result(5)
        for client in call.RTPClients:
            client.parse_packet = lambda raw, s=stream: self._loop.call_soon_threadsafe(_receive, s, raw)
        call.answer()
        metrics.SIP_CALLS.labels("answered").inc()
        while call.state == CallState.ANSWERED and self._running:
            time.sleep(POLL_S)
        reason = "hangup" if self._running else "shutdown"
        asyncio.run_coroutine_threadsafe(self._close(leg, stream, reason), self._loop).result(30)

    def _allowed(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self._allow)

    @staticmethod
    def _choose_codec(call: VoIPCall) -> str | None:
        """Keep only the first offered G.711 codec (plus telephone-event) in the answer."""
        for client in call.RTPClients:
            for pt, codec in client.assoc.items():
                if codec in CODECS:
                    client.assoc = {p: c for p, c in client.assoc.items()
                                    if p == pt or c == RTP.PayloadType.EVENT}
                    client.preference = codec
                    return CODECS[codec]
        return None

    # -- event loop ----------------------------------------------------------------------------
    async def _open(self, call: VoIPCall, fmt: str, meta: dict[str, Any]) -> tuple[Leg, RtpStream]:
        call_id = sip_call_id(call.call_id, str(call.request.headers.get(CALL_HEADER, "")))
        leg = self.calls.start_leg(call_id, self.cfg.role, "sip", meta)
        return leg, RtpStream(FORMATS[fmt], leg.feed, self.jitter_depth)

    @staticmethod
    async def _close(leg: Leg, stream: RtpStream, reason: str) -> None:
        stream.finish()
        await leg.end(reason)


def _receive(stream: RtpStream, raw: bytes) -> None:
    """One RTP datagram of a SIP call, on the event loop; telephone-events are skipped."""
    try:
        packet = parse_rtp(raw)
    except RtpError:
        metrics.RTP_DROPPED.labels("malformed").inc()
        return
    if packet.payload_type >= 96 and stream.fmt.static_pt is not None:
        return  # RFC 4733 telephone-event (DTMF); not audio
    try:
        stream.receive(packet)
    except Exception:  # a failing leg must not stop pyVoIP's receiver thread
        log.exception("SIP RTP stream failed")


def _pyvoip_debug(message: str, short: str | None = None) -> None:
    """pyVoIP's ``debug()`` prints ``short`` to stdout (e.g. "TODO: Add 500 Error on Receiving SIP
    Response" for any response it has no use for); send the full message to our log instead."""
    log.debug("pyVoIP: %s", message)


def _answer_options(client: SIP.SIPClient) -> None:
    """Answer OPTIONS (the PBX's qualify keepalive) with 200 OK; pyVoIP drops them, so the PBX marks
    the contact Unreachable and stops routing calls to it. Responses go to the top Via like pyVoIP's BYE."""
    parse_message = client.parse_message

    def parse(message: SIP.SIPMessage) -> None:
        if message.type != SIP.SIPMessageType.MESSAGE or message.method != "OPTIONS":
            parse_message(message)
            return
        host, port = message.headers["Via"][0]["address"]
        client.out.sendto(client.gen_ok(message).encode("utf8"), (host, int(port)))

    client.parse_message = parse  # type: ignore[method-assign]


# pyVoIP parses only the requests it lists, and prints its debug chatter; both are module state.
if "OPTIONS" not in pyVoIP.SIPCompatibleMethods:
    pyVoIP.SIPCompatibleMethods.append("OPTIONS")
for _module in (SIP, RTP, pyvoip_voip):
    _module.debug = _pyvoip_debug


def _deny(call: VoIPCall) -> None:
    """Answer 486 Busy Here. pyVoIP's ``deny()`` sends it, then stops RTP clients it never started and raises
    ``AttributeError`` before it forgets the call; finish that bookkeeping here."""
    try:
        call.deny()
    except AttributeError:
        call.state = CallState.ENDED
        call.phone.calls.pop(call.request.headers["Call-ID"], None)


def _from_number(request: Any) -> str:
    return str((request.headers.get("From") or {}).get("number", ""))
