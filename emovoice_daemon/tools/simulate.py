"""Call simulator: plays WAV files into a daemon as real-time AudioSocket calls.

Byte-for-byte what Asterisk's ``AudioSocket()`` sends: a UUID frame, 320-byte signed-linear
little-endian frames every 20 ms, a short last frame, then EOF (Asterisk sends no hangup
frame). Whatever the server sends back is read and discarded, as Asterisk would play it.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from emovoice_daemon.ingest.audiosocket import Kind, encode_frame
from emovoice_daemon.scoring.resample import resample

FRAME_SAMPLES = 160
FRAME_S = 0.02


def load_call_audio(path: str | Path) -> np.ndarray:
    """A WAV as 8 kHz mono int16 (first channel of a multi-channel file)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = resample(data[:, 0], rate, 8000)
    return np.clip(np.rint(audio * 32767), -32768, 32767).astype(np.int16)


def audiosocket_frames(call_id: str, pcm: np.ndarray) -> list[bytes]:
    """The frames of one call: UUID, then 20 ms audio frames."""
    frames = [encode_frame(Kind.UUID, uuid.UUID(call_id).bytes)]
    raw = pcm.astype("<i2").tobytes()
    step = FRAME_SAMPLES * 2
    frames += [encode_frame(Kind.AUDIO, raw[i:i + step]) for i in range(0, len(raw), step)]
    return frames


@dataclass
class CallResult:
    call_id: str
    frames_sent: int
    error: str = ""


async def play_call(host: str, port: int, pcm: np.ndarray, call_id: str | None = None,
                    speed: float = 1.0) -> CallResult:
    """Stream one call in real time (``speed`` > 1 plays faster) and close with EOF."""
    call_id = call_id or str(uuid.uuid4())
    reader, writer = await asyncio.open_connection(host, port)
    drain = asyncio.create_task(_discard(reader))
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = audiosocket_frames(call_id, pcm)
    sent = 0
    try:
        for i, frame in enumerate(frames):
            writer.write(frame)
            await writer.drain()
            sent += 1
            delay = start + i * FRAME_S / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    except ConnectionError as exc:
        return CallResult(call_id, sent, str(exc))
    finally:
        drain.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return CallResult(call_id, sent)


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def simulate(host: str, port: int, wavs: list[Path], calls: int, speed: float = 1.0,
                   stagger_s: float = 0.2) -> list[CallResult]:
    """Run ``calls`` concurrent calls, cycling through ``wavs``, starts staggered."""
    audio = [load_call_audio(w) for w in wavs]

    async def one(i: int) -> CallResult:
        await asyncio.sleep(i * stagger_s)
        return await play_call(host, port, audio[i % len(audio)], speed=speed)

    return list(await asyncio.gather(*(one(i) for i in range(calls))))
