"""AudioSocket: the framing of Asterisk's ``AudioSocket()`` application and ``AudioSocket/`` channel.

A frame is ``kind (1 byte) | length (2 bytes, big-endian) | payload``. Asterisk sends a UUID
frame first, then audio (``0x10`` = 8 kHz, or ``0x11``..``0x18`` for the higher signed-linear
rates of Asterisk >= 20.17/21.12/22.7/23.1, all little-endian), DTMF digits (``0x03``), and
ends a call by closing the socket (EOF) rather than with a ``0x00`` frame. Note ``0x10``
carries mu-law when ExternalMedia uses ``encapsulation=audiosocket&format=ulaw``: the encoding
of ``0x10`` comes from configuration, not from the frame.
"""
from __future__ import annotations

import asyncio
import enum
import ipaddress
import itertools
import logging
import select
import socket
import struct
import uuid
from typing import NamedTuple

import numpy as np

from emovoice_daemon.calls import CallManager, Leg
from emovoice_daemon.config import AudioSocketConfig
from emovoice_daemon.ingest.g711 import alaw_decode, ulaw_decode
from emovoice_daemon.ingest.listener import Listener, Refusals, resolve_max_connections
from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring.resample import StreamResampler

log = logging.getLogger(__name__)

HEADER = struct.Struct(">BH")
LEG_RATE = 8000


class Kind(enum.IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10
    SLIN12 = 0x11
    SLIN16 = 0x12
    SLIN24 = 0x13
    SLIN32 = 0x14
    SLIN44 = 0x15
    SLIN48 = 0x16
    SLIN96 = 0x17
    SLIN192 = 0x18
    ERROR = 0xFF


SLIN_RATES = {
    Kind.SLIN12: 12000, Kind.SLIN16: 16000, Kind.SLIN24: 24000, Kind.SLIN32: 32000,
    Kind.SLIN44: 44100, Kind.SLIN48: 48000, Kind.SLIN96: 96000, Kind.SLIN192: 192000,
}

ERROR_CODES = {0x00: "none", 0x01: "hangup", 0x02: "frame forwarding", 0x04: "memory"}


class ProtocolError(Exception):
    """The peer broke the framing; the connection is closed."""


class Frame(NamedTuple):
    kind: Kind
    payload: bytes


KINDS = {kind.value: kind for kind in Kind}
AUDIO_KINDS = frozenset({Kind.AUDIO, *SLIN_RATES})


def encode_frame(kind: Kind, payload: bytes = b"") -> bytes:
    """Serialise one frame."""
    return HEADER.pack(kind, len(payload)) + payload


class FrameParser:
    """Incremental parser: frames may be split or coalesced across TCP reads."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return the complete frames. Raises ProtocolError on a bad header."""
        buf = self._buf
        buf += data
        frames = []
        pos, size = 0, len(buf)
        while size - pos >= HEADER.size:
            kind_byte, length = HEADER.unpack_from(buf, pos)
            kind = KINDS.get(kind_byte)
            if kind is None:
                raise ProtocolError(f"unknown frame type 0x{kind_byte:02x}")
            if length > self.max_frame_bytes:
                raise ProtocolError(f"frame length {length} over the limit of {self.max_frame_bytes}")
            end = pos + HEADER.size + length
            if size < end:
                break
            frames.append(Frame(kind, bytes(buf[pos + HEADER.size:end])))
            pos = end
        del buf[:pos]
        return frames


def parse_uuid(payload: bytes) -> str:
    """The call id carried by a UUID frame."""
    if len(payload) != 16:
        raise ProtocolError(f"UUID frame of {len(payload)} bytes, expected 16")
    return str(uuid.UUID(bytes=payload))


class AudioDecoder:
    """Turns audio frame payloads into int16 samples at 8 kHz, whatever the frame rate."""

    def __init__(self, payload_format: str) -> None:
        self.payload_format = payload_format
        self._resamplers: dict[int, StreamResampler] = {}

    def check(self, frame: Frame) -> None:
        """An empty payload, or half a slin sample, is the peer's protocol error."""
        if not frame.payload:
            raise ProtocolError(f"empty {frame.kind.name} frame")
        if len(frame.payload) % 2 and (frame.kind != Kind.AUDIO or self.payload_format == "slin"):
            raise ProtocolError(f"{frame.kind.name} frame of {len(frame.payload)} bytes: slin samples are 2 bytes")

    def decode(self, frame: Frame) -> np.ndarray:
        self.check(frame)
        if frame.kind == Kind.AUDIO and self.payload_format == "ulaw":
            return ulaw_decode(frame.payload)
        if frame.kind == Kind.AUDIO and self.payload_format == "alaw":
            return alaw_decode(frame.payload)
        pcm = np.frombuffer(frame.payload, dtype="<i2")
        rate = SLIN_RATES.get(frame.kind, LEG_RATE)
        if rate == LEG_RATE:
            return pcm if pcm.dtype == np.int16 else pcm.astype(np.int16)  # read-only view on little-endian hosts
        resampler = self._resamplers.setdefault(rate, StreamResampler(rate, LEG_RATE))
        return np.clip(np.rint(resampler.process(pcm)), -32768, 32767).astype(np.int16)

    def decode_run(self, frames: list[Frame]) -> np.ndarray:
        """Decode consecutive audio frames of one kind as one chunk: the samples that decoding each one gives."""
        if len(frames) == 1:
            return self.decode(frames[0])
        for frame in frames:
            self.check(frame)
        return self.decode(Frame(frames[0].kind, b"".join(f.payload for f in frames)))


SILENCE_FRAME = encode_frame(Kind.AUDIO, bytes(320))
KEEPALIVE_AFTER_S = 0.5


class TailFirstReader(asyncio.StreamReader):
    """A StreamReader that hands out the bytes it already holds before a lost connection shows.

    asyncio's own raises the error first and drops what it buffered: under load that was the
    last seconds of a call. Here a connection error reads as EOF after the data; ``lost`` says why.
    """

    lost: OSError | None = None

    def set_exception(self, exc: BaseException) -> None:
        if not isinstance(exc, OSError):
            super().set_exception(exc)
            return
        self.lost = exc
        self.feed_eof()


def _unread_input(fd: int) -> bool:
    """Bytes or the peer's FIN wait in the kernel: the peer is not quiet, the daemon is behind."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Connection:
    """One AudioSocket TCP connection; it becomes a call leg with its first valid audio frame."""

    def __init__(self, cfg: AudioSocketConfig, calls: CallManager, role: str,
                 reader: TailFirstReader, writer: asyncio.StreamWriter) -> None:
        self.cfg, self.calls, self.role, self.reader, self.writer = cfg, calls, role, reader, writer
        self.peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        self.parser = FrameParser(cfg.max_frame_bytes)
        self.decoder = AudioDecoder(cfg.payload_format)
        self.call_id: str | None = None
        self.leg: Leg | None = None
        self.stopping = False
        self._last_rx = asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Serve the connection until EOF, hangup, error, idle timeout or ``stop()``; always ends the leg."""
        keepalive = asyncio.create_task(self._keepalive()) if self.cfg.keepalive else None
        reason = "error"
        try:
            reason = await self._receive()
        except ProtocolError as exc:
            metrics.AUDIOSOCKET_ERRORS.labels("protocol").inc()
            log.warning("audiosocket %s: %s; closing this connection", self.peer, exc)
            reason = "protocol_error"
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception:  # a bug met by one call must not escape: log it, close this connection only
            metrics.AUDIOSOCKET_ERRORS.labels("internal").inc()
            log.exception("audiosocket %s: internal error; closing this connection", self.peer)
        finally:
            if keepalive:
                keepalive.cancel()
            self.writer.close()
            if self.leg is not None:
                await self.leg.end(reason)

    async def _receive(self) -> str:
        """Read frames until the call ends; idle means no *complete* frame, so a byte-a-second peer times out too."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + self.cfg.idle_timeout_s) as idle:  # one timer, moved per frame
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return self._at_eof()
                    self._last_rx = loop.time()
                    frames = self.parser.feed(data)
                    if frames:  # a started tap (role_ports) ends with the call, not with a party's silence
                        idle.reschedule(None if self.leg and self.role in self.cfg.role_ports
                                        else self._last_rx + self.cfg.idle_timeout_s)
                    reason = self._handle_all(frames)
                    if reason:
                        return reason
        except TimeoutError:
            log.info("audiosocket %s: no complete frame for %.1f s; closing", self.peer, self.cfg.idle_timeout_s)
            return "idle_timeout"

    def _handle_all(self, frames: list[Frame]) -> str | None:
        """Act on the frames of one read: consecutive audio frames reach the leg as one chunk."""
        for kind, run in itertools.groupby(frames, key=lambda f: f.kind):
            if kind in AUDIO_KINDS and self.call_id is not None:
                pcm = self.decoder.decode_run(list(run))
                if self.leg is None:
                    self._start(self.call_id)
                self.leg.feed(pcm)
                continue
            for frame in run:
                reason = self._handle(frame)
                if reason:
                    return reason
        return None

    def _at_eof(self) -> str:
        if self.stopping:
            return "shutdown"
        if self.reader.lost is not None:
            log.info("audiosocket %s: connection lost: %s", self.peer, self.reader.lost)
        if self.parser.pending:
            log.warning("audiosocket %s: closed mid-frame (%d bytes dropped)", self.peer, self.parser.pending)
        return "eof"

    def stop(self) -> None:
        """Shutdown: close the socket; what was received is still scored, the leg ends with reason ``shutdown``."""
        self.stopping = True
        self.writer.close()

    def _handle(self, frame: Frame) -> str | None:
        """Act on one frame (audio goes through _handle_all); returns an end reason when the call is over."""
        if self.call_id is None:
            if frame.kind != Kind.UUID:
                raise ProtocolError(f"first frame is {frame.kind.name}, expected UUID")
            self.call_id = parse_uuid(frame.payload)
            return None
        if frame.kind == Kind.HANGUP:
            return "hangup"
        if frame.kind == Kind.ERROR:
            code = frame.payload[0] if frame.payload else 0
            log.warning("audiosocket %s: peer error 0x%02x (%s)", self.peer, code, ERROR_CODES.get(code, "application"))
            return "error"
        if frame.kind == Kind.UUID:
            raise ProtocolError("second UUID frame on one connection")
        if self.leg is not None:  # Asterisk streams audio from the start: a digit before it is no call
            self.leg.dtmf(frame.payload[:1].decode("ascii", "replace"))
        return None

    def _start(self, call_id: str) -> None:
        """The first valid audio frame makes the connection a call (call.started)."""
        try:
            self.leg = self.calls.start_leg(call_id, self.role, "audiosocket", {"peer": self.peer})
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None

    async def _keepalive(self) -> None:
        """Send silence while the caller is quiet: AudioSocket() hangs up after 2 s of no activity."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEPALIVE_AFTER_S)
            transport = self.writer.transport
            if transport.is_closing() or transport.get_write_buffer_size() > 64 * 1024:
                continue  # a peer that never reads gets no more; its buffer stays bounded
            if _unread_input(self.writer.get_extra_info("socket").fileno()):
                continue  # behind on reading, or the caller hung up: a write could only meet a closed socket
            if loop.time() - self._last_rx >= KEEPALIVE_AFTER_S:
                self.writer.write(SILENCE_FRAME)


class AudioSocketServer:
    """TCP listeners accepting AudioSocket connections from allowed peers.

    ``port`` serves legs of role ``cfg.role``; each ``role_ports`` entry adds a listener whose legs
    have that role, so the customer and agent taps of one call share its UUID as call id.
    """

    def __init__(self, cfg: AudioSocketConfig, calls: CallManager) -> None:
        self.cfg, self.calls = cfg, calls
        self._allow = [ipaddress.ip_network(n, strict=False) for n in cfg.allow]
        self._listeners: list[Listener] = []
        self._connections: dict[asyncio.Task[None], Connection] = {}
        self._serving: set[asyncio.Task[None]] = set()  # from accept until the connection ends
        self.refusals = Refusals()

    async def start(self) -> None:
        limit = resolve_max_connections(self.cfg.max_connections)
        metrics.AUDIOSOCKET_CONNECTIONS.set_function(self.live)
        for role, port in [(self.cfg.role, self.cfg.port), *self.cfg.role_ports.items()]:
            listener = Listener(self.cfg.host, port, role, limit, self.live, self._serve,
                                self.refusals)
            listener.start()
            self._listeners.append(listener)
            log.info("audiosocket listening on %s (role %s, at most %d connections)", listener.address, role, limit)

    def live(self) -> int:
        """Connections open now (from accept until the connection ends)."""
        return len(self._serving)

    @property
    def address(self) -> str:
        """host:port of the main listener."""
        return self._listeners[0].address if self._listeners else f"{self.cfg.host}:{self.cfg.port}"

    def _serve(self, conn: socket.socket, role: str) -> None:
        task = asyncio.create_task(self.adopt(role, conn))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    def allowed(self, host: str) -> bool:
        addr = ipaddress.ip_address(host.split("%")[0])
        return any(addr in net for net in self._allow)

    async def _accept(self, role: str, reader: TailFirstReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("peername")[0]
        if not self.allowed(host):
            metrics.AUDIOSOCKET_ERRORS.labels("rejected_peer").inc()
            log.warning("audiosocket: rejected connection from %s (not in audiosocket.allow)", host)
            writer.close()
            return
        task = asyncio.current_task()
        self._connections[task] = connection = Connection(self.cfg, self.calls, role, reader, writer)
        try:
            await connection.run()
        finally:
            del self._connections[task]

    async def adopt(self, role: str, sock: socket.socket) -> None:
        """Serve a connection accepted by another process (the main process of a worker pool)."""
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        reader = TailFirstReader()  # asyncio.open_connection(sock=sock), with the tail-keeping reader
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        await self._accept(role, reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def stop_accepting(self) -> None:
        """Close the listeners; live connections go on."""
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    async def close_all(self) -> None:
        """Close live connections and wait until their legs have ended: what was received is scored, live
        legs end with reason ``shutdown``, legs already ending (the caller hung up) keep theirs."""
        for connection in self._connections.values():
            connection.stop()
        await asyncio.gather(*self._connections, *self._serving, return_exceptions=True)
