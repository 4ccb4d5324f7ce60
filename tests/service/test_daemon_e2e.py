"""End to end: a daemon subprocess, real TCP AudioSocket calls, events from the JSONL log and the WebSocket."""
from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid

import aiohttp
import numpy as np

from emovoice_daemon.ingest.audiosocket import Kind, encode_frame
from emovoice_daemon.tools.simulate import play_call
from tests.conftest import DaemonProcess, shared_path


async def collect_ws(daemon: DaemonProcess, call_id: str, until: str, timeout: float = 60) -> list[dict]:
    """Events of one call from the /events WebSocket, until an event of type ``until``."""
    url = f"http://127.0.0.1:{daemon.api_port}/events?call_id={call_id}"
    out: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {daemon.token}"}) as ws:
            async with asyncio.timeout(timeout):
                async for msg in ws:
                    out.append(json.loads(msg.data))
                    if out[-1]["type"] == until:
                        return out
    return out


def of_call(events: list[dict], call_id: str) -> list[dict]:
    return [e for e in events if e["call_id"] == call_id]


async def until_ended(daemon: DaemonProcess, call_id: str) -> list[dict]:
    """The call's events from the JSONL log once it has ended (polled off the event loop)."""
    def done(events: list[dict]) -> bool:
        return any(e["type"] == "call.ended" for e in of_call(events, call_id))
    return of_call(await asyncio.to_thread(daemon.wait_for, done), call_id)


async def test_call_is_scored_and_reported_on_log_and_websocket(daemon: DaemonProcess, speech_8k: np.ndarray) -> None:
    call_id = str(uuid.uuid4())
    ws_task = asyncio.create_task(collect_ws(daemon, call_id, "call.ended"))
    await asyncio.sleep(0.5)  # subscribed before the call starts
    result = await play_call("127.0.0.1", daemon.audiosocket_port, speech_8k, call_id, speed=2.0)
    assert result.error == ""
    ws_events = await ws_task
    log_events = await until_ended(daemon, call_id)
    for events in (ws_events, log_events):
        types = [e["type"] for e in events]
        assert types[0] == "call.started" and types[-1] == "call.ended"
        assert types.count("score") >= 1
    assert [e["seq"] for e in ws_events] == [e["seq"] for e in log_events]  # the same events, in order
    score = next(e for e in log_events if e["type"] == "score")
    assert set(score["probs"]) == {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    assert abs(sum(score["probs"].values()) - 1) < 1e-3
    assert score["window"]["end"] - score["window"]["start"] == 3.0
    assert set(score["model"]) == {"name", "trained", "version"} and score["model"]["version"] == "base"
    ended = log_events[-1]
    assert ended["reason"] == "eof"  # Asterisk closes the socket; the simulator does the same
    assert ended["summary"]["windows_scored"] == len([e for e in log_events if e["type"] == "score"])


def test_api_needs_the_token_except_health(daemon: DaemonProcess) -> None:
    assert daemon.get("/health")[0] == 200
    assert daemon.get("/metrics")[0] == 401
    assert daemon.get("/metrics", token="wrong")[0] == 401
    status, body = daemon.get("/metrics", token=daemon.token)
    assert status == 200 and b"emovoice_live_legs" in body


async def send_raw(port: int, data: bytes, close_after: float = 0.2) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(close_after)
    try:
        reply = await asyncio.wait_for(reader.read(65536), 2)
    except (asyncio.TimeoutError, ConnectionError):
        reply = b""
    writer.close()
    return reply


async def test_garbage_never_stops_other_calls(daemon: DaemonProcess, speech_8k: np.ndarray) -> None:
    good_id = str(uuid.uuid4())
    uuid_frame = encode_frame(Kind.UUID, uuid.uuid4().bytes)
    garbage = [
        b"\x7f" + os.urandom(4999),                                           # random bytes, no frame type first
        uuid_frame + encode_frame(Kind.AUDIO, bytes(320))[:100],              # truncated frame, then close
        uuid_frame + struct.pack(">BH", Kind.AUDIO, 65535) + bytes(1000),     # 65535-byte length
        struct.pack(">BH", Kind.AUDIO, 320) + bytes(320),                     # audio before any UUID
        uuid_frame + encode_frame(Kind.AUDIO, bytes(320)) + b"\x10\x01",      # closed mid-header
    ]
    good = asyncio.create_task(play_call("127.0.0.1", daemon.audiosocket_port, speech_8k, good_id, speed=2.0))
    for _ in range(3):
        await asyncio.gather(*(send_raw(daemon.audiosocket_port, g) for g in garbage))
    assert (await good).error == ""
    events = await until_ended(daemon, good_id)
    assert sum(e["type"] == "score" for e in events) >= 1
    assert daemon.proc.poll() is None and daemon.get("/health")[0] == 200
    daemon.wait_for_stderr("unknown frame type 0x7f", "over the limit", "expected UUID")


async def test_real_capture_replayed_with_its_timing(daemon: DaemonProcess) -> None:
    """Replay Asterisk's own bytes (frames.json gives arrival times), ending with EOF as Asterisk does."""
    data = shared_path("asterisk", "scenarios", "audiosocket_app_pjsip.bin").read_bytes()
    timing = json.loads(shared_path("asterisk", "scenarios", "audiosocket_app_pjsip.frames.json").read_text())
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.audiosocket_port)
    start, offset = asyncio.get_running_loop().time(), 0
    for frame in timing:
        await asyncio.sleep(max(0.0, start + frame["t"] - asyncio.get_running_loop().time()))
        writer.write(data[offset:offset + 3 + frame["len"]])
        offset += 3 + frame["len"]
    assert offset == len(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    call_id = timing[0]["uuid"]
    events = await until_ended(daemon, call_id)
    assert events[0]["type"] == "call.started" and events[-1]["reason"] == "eof"
    assert events[-1]["summary"]["duration_s"] > 1.0


async def test_keepalive_silence_while_caller_is_quiet(daemon: DaemonProcess) -> None:
    """AudioSocket() hangs up after 2 s with no audio either way: the daemon must send some back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.audiosocket_port)
    writer.write(encode_frame(Kind.UUID, uuid.uuid4().bytes) + encode_frame(Kind.AUDIO, bytes(320)))
    await writer.drain()
    received = b""
    async with asyncio.timeout(5):
        while len(received) < 3 + 320:
            received += await reader.read(4096)
    assert received[:3] == struct.pack(">BH", Kind.AUDIO, 320) and received[3:323] == bytes(320)
    writer.close()
