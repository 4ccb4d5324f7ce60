"""RTP (RFC 3550) packets and an asyncio UDP receiver that turns RTP streams into 8 kHz audio.

One UDP port serves every stream; a stream is identified by the packet's source address
(ARI tells us where each ExternalMedia channel sends from). Each stream reorders packets per
SSRC in a :class:`~emovoice_daemon.ingest.jitterbuffer.JitterBuffer`, conceals lost packets with
silence, decodes G.711 (mu-law, A-law) or slin16 (big-endian, 16 kHz, resampled to 8 kHz)
and hands int16 @ 8 kHz to its sink. Malformed packets, packets from unknown sources and
packets of the wrong payload type are counted and dropped; a stream whose packets stop for
``timeout_s`` is ended.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from emovoice_daemon.ingest.g711 import alaw_decode, ulaw_decode
from emovoice_daemon.ingest.jitterbuffer import BufferStats, JitterBuffer
from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring.resample import StreamResampler

log = logging.getLogger(__name__)

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
LEG_RATE = 8000

Address = tuple[str, int]
_STAT_FIELDS = [f.name for f in dataclasses.fields(BufferStats)]
_STAT_METRICS = {"received": metrics.RTP_PACKETS, "lost": metrics.RTP_LOST,
                 "late": metrics.RTP_DROPPED.labels("late"), "duplicate": metrics.RTP_DROPPED.labels("duplicate")}

AudioSink = Callable[[np.ndarray], None]
TimeoutHandler = Callable[[], Awaitable[None]]


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile-defined id, data)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet (RFC 3550 section 5.1); raises RtpError on anything malformed."""
    if len(data) < HEADER.size:
        raise RtpError(f"{len(data)} bytes is shorter than the 12-byte RTP header")
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    end = len(data)
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0:
            raise RtpError("padding bit set but padding count is 0")
        end -= pad
    offset = HEADER.size + 4 * (b0 & 0x0F)
    if offset > end:
        raise RtpError("CSRC list runs past the end of the packet")
    csrcs = struct.unpack_from(f"!{b0 & 0x0F}I", data, HEADER.size)
    extension = None
    if b0 & 0x10:
        if offset + 4 > end:
            raise RtpError("header extension runs past the end of the packet")
        ext_id, words = struct.unpack_from("!HH", data, offset)
        extension = (ext_id, data[offset + 4 : offset + 4 + 4 * words])
        offset += 4 + 4 * words
        if offset > end:
            raise RtpError("header extension runs past the end of the packet")
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, data[offset:end], bool(b1 & 0x80), csrcs, extension)


def build_rtp(packet: RtpPacket) -> bytes:
    """Serialise a packet (no padding); used by tests and by peers that send audio back."""
    b0 = (RTP_VERSION << 6) | (0x10 if packet.extension else 0) | len(packet.csrcs)
    b1 = (0x80 if packet.marker else 0) | packet.payload_type
    out = HEADER.pack(b0, b1, packet.sequence, packet.timestamp, packet.ssrc)
    out += struct.pack(f"!{len(packet.csrcs)}I", *packet.csrcs)
    if packet.extension:
        ext_id, data = packet.extension
        out += struct.pack("!HH", ext_id, len(data) // 4) + data
    return out + packet.payload


def _slin16_decode(payload: bytes) -> np.ndarray:
    if len(payload) % 2:
        raise RtpError(f"slin16 payload of odd length {len(payload)}")
    return np.frombuffer(payload, dtype=">i2").astype(np.int16)


@dataclass(frozen=True)
class PayloadFormat:
    """How one configured ``format`` travels in RTP."""

    name: str
    rate: int
    static_pt: int | None  # None: dynamic (96-127), negotiated out of band
    decode: Callable[[bytes], np.ndarray]

    def accepts(self, payload_type: int) -> bool:
        return payload_type == self.static_pt if self.static_pt is not None else 96 <= payload_type <= 127


FORMATS = {
    "ulaw": PayloadFormat("ulaw", 8000, 0, ulaw_decode),
    "alaw": PayloadFormat("alaw", 8000, 8, alaw_decode),
    "slin16": PayloadFormat("slin16", 16000, None, _slin16_decode),
}


def to_int16(x: np.ndarray) -> np.ndarray:
    """Round and clip float samples (int16 scale) to int16."""
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


PLAYOUT_S = 0.1  # decoded audio goes on in chunks this long: per-chunk work (resampling, cues, the
# scoring queue) done every 20 ms packet cost more CPU than the 40 streams of 20 calls leave


class RtpStream:
    """One media stream: per-SSRC reordering, concealment, decoding and resampling to 8 kHz, handed to
    the sink in chunks of PLAYOUT_S (and what is left when the stream finishes)."""

    def __init__(self, fmt: PayloadFormat, sink: AudioSink, depth: int = 3) -> None:
        self.fmt = fmt
        self.sink = sink
        self.depth = depth
        self.last_seen = time.monotonic()
        self._ssrc: int | None = None
        self._buffer: JitterBuffer[bytes] = JitterBuffer(depth)
        self._counted = BufferStats()  # what of _buffer.stats is already in self.stats
        self.stats = BufferStats()  # totals over every SSRC of this stream
        self._frame = fmt.rate // 50  # concealment length until the first packet tells us
        self._resampler = StreamResampler(fmt.rate, LEG_RATE) if fmt.rate != LEG_RATE else None
        self._chunk = round(fmt.rate * PLAYOUT_S)
        self._pending: list[np.ndarray] = []  # decoded, not yet handed on (fewer than _chunk samples)
        self._pending_len = 0

    def receive(self, packet: RtpPacket) -> None:
        """Take one parsed packet of this stream; feeds whatever is ready to the sink."""
        if not self.fmt.accepts(packet.payload_type):
            metrics.RTP_DROPPED.labels("payload_type").inc()
            return
        self.last_seen = time.monotonic()
        released: list[bytes | None] = []
        if packet.ssrc != self._ssrc:
            released = self._buffer.flush()
            self._sync_stats()
            self._ssrc, self._buffer = packet.ssrc, JitterBuffer(self.depth)
            self._counted = BufferStats()
        released += self._buffer.push(packet.sequence, packet.payload)
        self._sync_stats()
        self._play(released)

    def finish(self) -> None:
        """The stream ended: play what is still held."""
        released = self._buffer.flush()
        self._sync_stats()
        self._play(released, flush=True)

    def _sync_stats(self) -> None:
        """Add what the current buffer counted since the last sync to the totals and metrics."""
        now, before = self._buffer.stats, self._counted
        for f in _STAT_FIELDS:
            delta = getattr(now, f) - getattr(before, f)
            if delta:
                setattr(self.stats, f, getattr(self.stats, f) + delta)
                setattr(before, f, getattr(now, f))
                if f in _STAT_METRICS:
                    _STAT_METRICS[f].inc(delta)

    def _play(self, payloads: list[bytes | None], flush: bool = False) -> None:
        """Decode (silence for a lost packet); hand on a chunk once PLAYOUT_S is pending, or all on ``flush``."""
        for payload in payloads:
            if payload is None:
                pcm = np.zeros(self._frame, dtype=np.int16)
            else:
                try:
                    pcm = self.fmt.decode(payload)
                except RtpError:
                    metrics.RTP_DROPPED.labels("malformed").inc()
                    pcm = np.zeros(self._frame, dtype=np.int16)
                self._frame = len(pcm) or self._frame
            self._pending.append(pcm)
            self._pending_len += len(pcm)
        if self._pending_len < self._chunk and not (flush and self._pending_len):
            return
        pcm = np.concatenate(self._pending)
        self._pending, self._pending_len = [], 0
        if self._resampler is not None:
            pcm = to_int16(self._resampler.process(pcm))
        self.sink(pcm)


@dataclass
class _Registration:
    stream: RtpStream
    on_timeout: TimeoutHandler | None


REJECT_LOG_INTERVAL_S = 60.0


class RtpReceiver(asyncio.DatagramProtocol):
    """UDP endpoint for every RTP stream; streams are registered by their source address."""

    def __init__(self, timeout_s: float = 5.0, jitter_depth: int = 3) -> None:
        self.timeout_s = timeout_s
        self.jitter_depth = jitter_depth
        self._streams: dict[Address, _Registration] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.receive_buffer = 0  # bytes the kernel granted the socket (0: not set, system default)
        self._rejected = 0  # datagrams from unregistered sources since the last log line
        self._rejected_logged = -REJECT_LOG_INTERVAL_S

    async def start(self, host: str, port: int, receive_buffer: int = 0) -> Address:
        """Bind the UDP socket (kernel receive buffer of ``receive_buffer`` bytes, 0 = system default);
        returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport  # type: ignore[assignment]
        if receive_buffer:
            self.receive_buffer = set_receive_buffer(transport.get_extra_info("socket"), receive_buffer)
        self._watchdog = asyncio.create_task(self._watch(), name="rtp-watchdog")
        self.address: Address = transport.get_extra_info("sockname")[:2]
        return self.address

    async def stop(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
        if self._transport:
            self._transport.close()
        for source in list(self._streams):
            self.remove_stream(source)

    def add_stream(self, source: Address, fmt: str, sink: AudioSink,
                   on_timeout: TimeoutHandler | None = None) -> RtpStream:
        """Accept packets from ``source`` (host, port) as one stream in ``fmt`` (ulaw/alaw/slin16)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown RTP format {fmt!r} (known: {', '.join(FORMATS)})")
        stream = RtpStream(FORMATS[fmt], sink, self.jitter_depth)
        self._streams[_key(source)] = _Registration(stream, on_timeout)
        return stream

    def remove_stream(self, source: Address) -> None:
        """Stop accepting ``source``; what its buffer still holds is played first."""
        reg = self._streams.pop(_key(source), None)
        if reg:
            self._finish(reg.stream)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        reg = self._streams.get(_key(addr[:2]))
        if reg is None:
            metrics.RTP_DROPPED.labels("unknown_source").inc()
            self._log_reject(addr)
            return
        try:
            packet = parse_rtp(data)
        except RtpError as exc:
            metrics.RTP_DROPPED.labels("malformed").inc()
            log.debug("dropped RTP from %s: %s", addr, exc)
            return
        try:
            reg.stream.receive(packet)
        except Exception:  # one stream's sink failing must not stop the others
            log.exception("RTP stream from %s failed; ending it", addr)
            self._end(_key(addr[:2]), reg)

    def _log_reject(self, addr: tuple) -> None:
        """Log datagrams from sources no call registered: at most one line a minute, however many arrive."""
        self._rejected += 1
        now = time.monotonic()
        if now - self._rejected_logged >= REJECT_LOG_INTERVAL_S:
            log.warning("RTP: dropped %d datagram(s) from sources no call registered, latest from %s:%s",
                        self._rejected, *addr[:2])
            self._rejected, self._rejected_logged = 0, now

    def _finish(self, stream: RtpStream) -> None:
        try:
            stream.finish()
        except Exception:
            log.exception("RTP stream flush failed")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout_s / 4))
            now = time.monotonic()
            for source, reg in list(self._streams.items()):
                if now - reg.stream.last_seen >= self.timeout_s:
                    metrics.RTP_STREAM_TIMEOUTS.inc()
                    log.info("RTP stream from %s:%d timed out", *source)
                    self._finish(reg.stream)
                    self._end(source, reg)

    def _end(self, source: Address, reg: _Registration) -> None:
        """Forget a stream and tell its owner (which ends the call)."""
        self._streams.pop(source, None)
        if reg.on_timeout:
            task = asyncio.create_task(reg.on_timeout(), name=f"rtp-end-{source}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


RMEM_MAX = "/proc/sys/net/core/rmem_max"


def set_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """Ask for a ``wanted``-byte kernel receive buffer, so bursts survive while the event loop is busy;
    returns what the kernel granted (Linux reports twice the usable size). Without CAP_NET_ADMIN
    (SO_RCVBUFFORCE) the kernel caps the request at ``net.core.rmem_max``: logged as a warning."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), wanted)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    try:
        with open(RMEM_MAX) as f:
            rmem_max = f.read().strip()
    except OSError:
        rmem_max = "unknown"
    if granted < wanted:
        log.warning("RTP receive buffer: asked %d bytes, kernel granted %d (net.core.rmem_max = %s; raise it "
                    "or run with CAP_NET_ADMIN to avoid packet loss under load)", wanted, granted, rmem_max)
    else:
        log.info("RTP receive buffer: asked %d bytes, kernel granted %d (net.core.rmem_max = %s)",
                 wanted, granted, rmem_max)
    return granted


def _key(addr: Address | tuple) -> Address:
    return (str(addr[0]), int(addr[1]))
