"""Load and fault peers for the AudioSocket listener, a fake systemd notify socket, and process RSS.

Used by ``bench/bench_load.py`` and the operations tests. A *healthy* peer is the simulator's
``play_call`` (byte-faithful to Asterisk); the fault peers each break one rule: a reset
mid-call, a byte a second, an oversize frame, malformed frames, a peer that never reads.
"""
from __future__ import annotations

import asyncio
import functools
import contextlib
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from emovoice_daemon.ingest.audiosocket import Kind, encode_frame
from emovoice_daemon.tools.simulate import FRAME_S, audiosocket_frames, play_call

RATE = 8000


def voiced_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Human speech (the demo's calm CREMA-D caller, bundled) looped to ``seconds``, starting at a seeded offset:
    it passes the VAD and the speech gate, as a caller does."""
    speech = _calm_speech()
    start = np.random.default_rng(seed).integers(len(speech))
    n = int(seconds * RATE)
    return np.tile(np.roll(speech, -start), n // len(speech) + 1)[:n]


@functools.lru_cache(maxsize=1)
def _calm_speech() -> np.ndarray:
    from emovoice_daemon.tools.demo import CALM_CLIPS, compose

    return compose(CALM_CLIPS)[0]


def windows_due(samples: int, window: int = 3 * RATE, hop: int = RATE) -> int:
    """Windows the engine scores for a leg of ``samples`` (default 3 s window, 1 s hop)."""
    if samples >= window:
        return (samples - window) // hop + 1
    return 1 if samples >= RATE else 0


@dataclass
class PeerResult:
    """What one peer did: ``kind``, its call id, the samples it sent, and when the daemon closed it."""

    kind: str
    call_id: str
    samples: int = 0
    error: str = ""
    closed_after_s: float | None = None


async def healthy(host: str, port: int, pcm: np.ndarray, speed: float = 1.0) -> PeerResult:
    """A whole call at ``speed`` x real time, ended with EOF as Asterisk does."""
    result = await play_call(host, port, pcm, str(uuid.uuid4()), speed=speed)
    return PeerResult("healthy", result.call_id, len(pcm), result.error)


async def abrupt(host: str, port: int, pcm: np.ndarray, after_s: float) -> PeerResult:
    """Streams in real time for ``after_s`` then resets the connection mid-frame (RST, no FIN)."""
    call_id = str(uuid.uuid4())
    frames = audiosocket_frames(call_id, pcm)[: int(after_s / FRAME_S) + 1]
    _, writer = await asyncio.open_connection(host, port)
    for frame in frames:
        writer.write(frame)
        await asyncio.sleep(FRAME_S)
    writer.write(frames[-1][:5])  # half a frame
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return PeerResult("abrupt", call_id, (len(frames) - 1) * 160)


async def _until_closed(reader: asyncio.StreamReader, limit_s: float) -> float | None:
    """Seconds until the daemon closes the connection (reading and discarding), None if it stays open."""
    started = time.monotonic()
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        async with asyncio.timeout(limit_s):
            while await reader.read(65536):
                pass
    elapsed = time.monotonic() - started
    return elapsed if elapsed < limit_s else None


async def slow_loris(host: str, port: int, limit_s: float) -> PeerResult:
    """A UUID frame, then an audio frame one byte a second, until the daemon gives up on it."""
    call_id = str(uuid.uuid4())
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_frame(Kind.UUID, uuid.UUID(call_id).bytes))
    frame = encode_frame(Kind.AUDIO, bytes(320))

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in frame:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)

    sender = asyncio.create_task(trickle())
    closed = await _until_closed(reader, limit_s)
    sender.cancel()
    writer.close()
    return PeerResult("slow_loris", call_id, closed_after_s=closed)


async def never_reads(host: str, port: int, pcm: np.ndarray, limit_s: float) -> PeerResult:
    """Sends a second of audio, then goes quiet and never reads what the daemon sends back."""
    call_id = str(uuid.uuid4())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(b"".join(audiosocket_frames(call_id, pcm[:RATE])))
    started = time.monotonic()
    closed = None
    while time.monotonic() - started < limit_s:
        if _tcp_state(sock) != TCP_ESTABLISHED:  # the daemon sent FIN or RST (unread data hides EOF from recv)
            closed = time.monotonic() - started
            break
        await asyncio.sleep(0.1)
    sock.close()
    return PeerResult("never_reads", call_id, RATE, closed_after_s=closed)


TCP_ESTABLISHED = 1


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (Linux ``TCP_INFO``, first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "oversize": lambda u: encode_frame(Kind.UUID, u) + struct.pack(">BH", Kind.AUDIO, 65535) + bytes(4096),
    "unknown_kind": lambda u: encode_frame(Kind.UUID, u) + b"\x42\x00\x02ab",
    "audio_before_uuid": lambda u: encode_frame(Kind.AUDIO, bytes(320)),
    "short_uuid": lambda u: encode_frame(Kind.UUID, u[:7]),
    "second_uuid": lambda u: encode_frame(Kind.UUID, u) + encode_frame(Kind.UUID, u),
}


def _uuid_frame(u: bytes) -> bytes:
    return encode_frame(Kind.UUID, u)


HOSTILE: dict[str, Callable[[bytes], bytes]] = {  # none of these ever sends a valid audio frame: no call
    **MALFORMED,
    "nothing": lambda u: b"",
    "uuid_only": _uuid_frame,
    "zero_length_audio": lambda u: _uuid_frame(u) + encode_frame(Kind.AUDIO, b""),
    "odd_length_audio": lambda u: _uuid_frame(u) + encode_frame(Kind.AUDIO, bytes(321)),
    "truncated_frame": lambda u: _uuid_frame(u) + encode_frame(Kind.AUDIO, bytes(320))[:100],
    "hangup_first": lambda u: _uuid_frame(u) + encode_frame(Kind.HANGUP),
}


async def malformed(host: str, port: int, variant: str, limit_s: float = 5.0, hang_up: bool = False) -> PeerResult:
    """One of ``HOSTILE`` (then EOF with ``hang_up``); returns once the daemon has closed the connection."""
    call_id = str(uuid.uuid4())
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(HOSTILE[variant](uuid.UUID(call_id).bytes))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
        if hang_up:
            writer.write_eof()
    closed = await _until_closed(reader, limit_s)
    writer.close()
    return PeerResult(variant, call_id, closed_after_s=closed)


async def hostile(host: str, port: int, variant: str) -> PeerResult:
    """A hostile peer that hangs up after its bytes (a UUID alone, nothing, bad audio ...)."""
    return await malformed(host, port, variant, hang_up=True)


def unit_environment(unit: Path = Path(__file__).resolve().parents[1] / "systemd" / "emovoice.service") -> dict[str, str]:
    """The ``Environment=`` of the systemd unit, so measured daemons run as installed ones do."""
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            env.update(item.split("=", 1) for item in line[len("Environment="):].split())
    return env


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class FakeSystemd:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``; records (time, fields)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_s:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    def receive(self, timeout: float) -> list[tuple[float, dict[str, str]]]:
        """Read every datagram arriving within ``timeout`` s (or already queued); returns the new ones."""
        new = []
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                break
            new.append((time.monotonic(), dict(line.split("=", 1) for line in data.decode().splitlines())))
        self.messages += new
        return new

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float) -> tuple[float, dict[str, str]]:
        """(arrival time, fields) of the first message matching ``predicate``, received now or within ``timeout``."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for arrived, fields in self.messages[checked:]:
                if predicate(fields):
                    return arrived, fields
            checked = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching notify message in {timeout} s; got {self.messages}")
            self.receive(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()
