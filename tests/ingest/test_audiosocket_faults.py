"""AudioSocket under faults: hostile connections never become calls, and a lagging daemon loses no tail audio."""
from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import AsyncIterator

import pytest

from bench.loadgen import HOSTILE, hostile, voiced_audio, windows_due
from emovoice_daemon.calls import CallManager
from emovoice_daemon.config import AudioSocketConfig, EngineConfig, EscalationConfig, PipelineConfig
from emovoice_daemon.ingest.audiosocket import AudioSocketServer, Connection, Frame, Kind, encode_frame
from emovoice_daemon.judgement.policy import policy_factory
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import Event, EventBus
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.tools.simulate import audiosocket_frames
from tests.scoring.conftest import FakeClassifier


class Rig:
    """An AudioSocket server feeding real legs and a real engine; ``events`` is everything published."""

    def __init__(self, classifier: FakeClassifier, engine_cfg: EngineConfig) -> None:
        self.events: list[Event] = []
        self.bus = EventBus()
        self.bus.add_sink(self.events.append)
        self.engine = ScoringEngine(classifier, PipelineConfig(), engine_cfg)
        self.calls = CallManager(self.engine, self.bus, policy_factory(EscalationConfig()), {"name": "fake"})
        self.server = AudioSocketServer(AudioSocketConfig(port=0), self.calls)

    @property
    def port(self) -> int:
        return int(self.server.address.rsplit(":", 1)[1])

    def of(self, call_id: str, type_: str) -> list[Event]:
        return [e for e in self.events if e["call_id"] == call_id and e["type"] == type_]

    async def ended(self, call_id: str, timeout: float = 30) -> Event:
        async with asyncio.timeout(timeout):
            while not self.of(call_id, "call.ended"):
                await asyncio.sleep(0.05)
        return self.of(call_id, "call.ended")[0]


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    classifier, engine_cfg = getattr(request, "param", (FakeClassifier(), EngineConfig()))
    rig = Rig(classifier, engine_cfg)
    await rig.engine.start()
    await rig.server.start()
    try:
        yield rig
    finally:
        await rig.server.stop_accepting()
        await rig.server.close_all()
        await rig.engine.stop()


def uuid_frame(call_id: str) -> bytes:
    return encode_frame(Kind.UUID, uuid.UUID(call_id).bytes)


async def test_connections_that_never_deliver_audio_are_not_calls(rig: Rig) -> None:
    started_before = sum(s.value for s in metrics.CALLS_TOTAL.collect()[0].samples if s.name.endswith("_total"))
    results = await asyncio.gather(*(hostile("127.0.0.1", rig.port, variant) for variant in HOSTILE))
    assert all(r.closed_after_s is not None for r in results), results
    await asyncio.sleep(0.2)
    assert rig.events == [] and not rig.calls.legs and rig.engine.live_legs == 0
    started_after = sum(s.value for s in metrics.CALLS_TOTAL.collect()[0].samples if s.name.endswith("_total"))
    assert started_after == started_before


@pytest.mark.parametrize("variant", ["nothing", "one_header_byte", "uuid_only", "truncated_frame"])
async def test_a_peer_that_completes_no_frame_is_closed_after_the_idle_timeout(rig: Rig, variant: str) -> None:
    """Idle, or trickling part of a frame and then nothing: closed after ``idle_timeout_s``, not held open."""
    server = AudioSocketServer(AudioSocketConfig(port=0, idle_timeout_s=0.5), rig.calls)
    await server.start()
    try:
        sent = b"\x10" if variant == "one_header_byte" else HOSTILE[variant](uuid.uuid4().bytes)
        closed = await _closed_after(int(server.address.rsplit(":", 1)[1]), sent)
        assert closed is not None, f"{variant}: still open 10 s after its last byte (idle_timeout_s 0.5)"
    finally:
        await server.stop_accepting()
        await server.close_all()


async def _closed_after(port: int, sent: bytes) -> float | None:
    """Seconds until the daemon closes a connection that sent ``sent`` and stays open (None: over 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    start = time.monotonic()
    try:
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass  # the keep-alive silence
        return time.monotonic() - start
    except TimeoutError:
        return None
    finally:
        writer.close()


@pytest.mark.parametrize("bad", ["zero_length_audio", "odd_length_audio", "second_uuid", "unknown_kind"])
async def test_a_protocol_error_after_audio_ends_the_call_as_protocol_error(rig: Rig, bad: str) -> None:
    call_id = str(uuid.uuid4())
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    writer.write(b"".join(audiosocket_frames(call_id, voiced_audio(1.5))))
    async with asyncio.timeout(5):
        while not rig.calls.legs or next(iter(rig.calls.legs.values())).duration_s < 1.5:
            await asyncio.sleep(0.02)
    writer.write(HOSTILE[bad](uuid.UUID(call_id).bytes)[len(uuid_frame(call_id)):])
    ended = await rig.ended(call_id)
    writer.close()
    assert ended["reason"] == "protocol_error"
    assert ended["summary"]["duration_s"] == 1.5 and len(rig.of(call_id, "call.started")) == 1


SLOW_MODEL = (FakeClassifier(delay_s=0.2), EngineConfig(max_batch=4, max_lag_s=1.0))


@pytest.mark.parametrize("rig", [SLOW_MODEL], indirect=True)
async def test_a_lagging_daemon_scores_every_second_the_caller_sent(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overload: a slow model, and ingest starved of CPU (4 ms per frame). The caller sends 30 s and hangs up
    long before the daemon has read it all; the keepalive must not write into the closed socket (its error
    used to discard the audio still buffered), so every second sent is in the leg."""
    handle_all = Connection._handle_all

    def starved(self: Connection, frames: list[Frame]) -> str | None:
        time.sleep(0.004 * len(frames))
        return handle_all(self, frames)

    monkeypatch.setattr(Connection, "_handle_all", starved)
    pcm = voiced_audio(30)  # more than the reader buffers: the rest waits in the kernel
    call_ids = [str(uuid.uuid4()) for _ in range(2)]

    def caller(call_id: str) -> None:
        with socket.create_connection(("127.0.0.1", rig.port)) as sock:
            sock.sendall(b"".join(audiosocket_frames(call_id, pcm)))

    await asyncio.gather(*(asyncio.to_thread(caller, c) for c in call_ids))
    for call_id in call_ids:
        ended = await rig.ended(call_id, timeout=60)
        assert ended["reason"] == "eof", ended
        summary = ended["summary"]
        assert summary["duration_s"] == 30.0, summary
        assert summary["windows_scored"] + summary["windows_skipped"] == windows_due(len(pcm))
