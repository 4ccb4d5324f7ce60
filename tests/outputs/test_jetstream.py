"""JetStream publisher and readers against a real nats-server: round trip, subjects, de-duplication ids,
the bounded buffer while NATS is down, and a restart of the server mid-stream."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Iterator

import nats
import pytest

from emovoice_daemon.config import JetStreamConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import Event, EventBus
from emovoice_daemon.outputs.history import CallHistory
from emovoice_daemon.outputs.jetstream import MSG_ID, DurableReader, JetStreamPublisher, follow, site_filter
from tests.support.nats_servers import NatsNode, ids_in_stream


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsNode]:
    node = NatsNode("solo", tmp_path / "nats")
    node.start()
    yield node
    node.stop()


def sample(name: str, labels: tuple[str, ...] | dict[str, str] = ()) -> float:
    named = labels if isinstance(labels, dict) else dict(zip(("outcome",), labels))
    return metrics.REGISTRY.get_sample_value(name, named) or 0.0


async def eventually(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s")
        await asyncio.sleep(0.05)


def publish_calls(bus: EventBus, calls: list[str], scores: int) -> list[Event]:
    events = []
    for call in calls:
        events.append(bus.make_event("call.started", call, "mixed", source="audiosocket", meta={"agent": "1001"}))
    for i in range(scores):
        for call in calls:
            events.append(bus.make_event("score", call, "mixed", window={"start": i, "end": i + 3}))
    for call in calls:
        events.append(bus.make_event("call.ended", call, "mixed", reason="eof", summary={"duration_s": scores}))
    for event in events:
        bus.publish(event)
    return events


class Running:
    """A publisher on a bus, its run() task, and a client connection to read the stream with."""

    def __init__(self, cfg: JetStreamConfig) -> None:
        self.bus, self.publisher = EventBus(), JetStreamPublisher(cfg)
        self.bus.add_sink(self.publisher.sink)
        self.task = asyncio.create_task(self.publisher.run())

    async def stop(self) -> None:
        await self.publisher.close(1.0)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_round_trip_subjects_ids_and_readers(nats_node: NatsNode) -> None:
    cfg = JetStreamConfig(enabled=True, servers=[nats_node.url], site="lyon")
    running = Running(cfg)
    nc = await nats.connect(nats_node.url)
    try:
        js = nc.jetstream()
        await eventually(lambda: (nats_node.monitor("jsz") or {}).get("streams") == 1, what="stream created")
        followed: list[Event] = []
        follower = asyncio.create_task(_collect(follow(js, cfg.stream, site_filter("lyon")), followed))
        await asyncio.sleep(0.5)  # the ordered consumer delivers from now on
        # an ARI-style call id holds a dot, which a subject token cannot
        events = publish_calls(running.bus, ["8d1f-aaaa", "1700000000.42"], scores=20)
        await eventually(lambda: running.publisher.buffered == 0, what="buffer drained")

        info = await js.stream_info("EMOVOICE")
        assert info.state.messages == len(events) and info.config.subjects == ["emovoice.>"]
        first = await js.get_msg("EMOVOICE", 1)
        assert first.subject == "emovoice.lyon.8d1f-aaaa.call.started"
        assert first.headers[MSG_ID] == f"lyon:{events[0]['boot']}:{events[0]['seq']}"
        assert json.loads(first.data) == {**events[0], "site": "lyon"}
        dotted = await js.get_last_msg("EMOVOICE", "emovoice.lyon.1700000000_42.call.ended")
        assert json.loads(dotted.data)["call_id"] == "1700000000.42"

        await eventually(lambda: len(followed) == len(events), what="ordered consumer caught up")
        assert [e["seq"] for e in followed] == [e["seq"] for e in events]  # stream order = publish order here

        handled: list[tuple[Event, str]] = []

        async def handle(event: Event, msg_id: str) -> None:
            handled.append((event, msg_id))

        reader = asyncio.create_task(DurableReader(js, cfg.stream, "qa", "emovoice.*.*.call.>").run(handle))
        await eventually(lambda: len(handled) == 4, what="durable reader got the lifecycle events")
        assert sorted(e["type"] for e, _ in handled) == ["call.ended"] * 2 + ["call.started"] * 2
        reader.cancel()
        follower.cancel()
        await asyncio.gather(reader, follower, return_exceptions=True)
    finally:
        await nc.close()
        await running.stop()


async def _collect(events, into: list[Event]) -> None:
    async for event in events:
        into.append(event)


async def test_a_resent_event_is_stored_once(nats_node: NatsNode) -> None:
    running = Running(JetStreamConfig(enabled=True, servers=[nats_node.url], site="lyon"))
    try:
        event = running.bus.make_event("escalation.raised", "c1", "customer", severity="alert")
        duplicates = sample("emovoice_jetstream_published_total", ("duplicate",))
        running.publisher.sink(event)
        await eventually(lambda: running.publisher.buffered == 0)
        running.publisher.sink(event)  # e.g. re-sent after its ack was lost
        await eventually(lambda: running.publisher.buffered == 0)
        assert sample("emovoice_jetstream_published_total", ("duplicate",)) == duplicates + 1
        assert (nats_node.monitor("jsz?streams=true") or {}).get("messages") == 1
    finally:
        await running.stop()


async def test_buffered_while_nats_is_down_then_delivered_in_order_lifecycle_kept(tmp_path: Path) -> None:
    node = NatsNode("late", tmp_path / "nats")  # ports chosen, nothing listening yet
    running = Running(JetStreamConfig(enabled=True, servers=[node.url], site="lyon", buffer=50))
    try:
        dropped = {kind: sample("emovoice_jetstream_dropped_total", {"kind": kind}) for kind in ("score", "lifecycle")}
        events = publish_calls(running.bus, ["c1"], scores=78)  # 80 events into a 50-event buffer
        assert running.publisher.buffered == 50 and sample("emovoice_jetstream_buffered") == 50
        assert sample("emovoice_jetstream_dropped_total", {"kind": "score"}) == dropped["score"] + 30
        assert sample("emovoice_jetstream_dropped_total", {"kind": "lifecycle"}) == dropped["lifecycle"]
        assert "not connected to NATS" in running.publisher.problem(10.0)
        node.start()
        await eventually(lambda: running.publisher.buffered == 0, timeout=30, what="buffer drained after start")
        nc = await nats.connect(node.url)
        try:
            got: list[Event] = []
            sub = await nc.jetstream().subscribe("emovoice.>", ordered_consumer=True)
            while len(got) < 50:
                got.append(json.loads((await sub.next_msg(timeout=5)).data))
            # the call's start and end kept; of its scores the first 48 (the oldest one gave way to call.ended)
            assert [e["seq"] for e in got] == [e["seq"] for e in [events[0], *events[2:50], events[-1]]]
        finally:
            await nc.close()
        assert "buffer was full" in running.publisher.problem(10.0)  # a drop stays visible for the health period
        assert running.publisher.problem(0.0) is None
    finally:
        await running.stop()
        node.stop()


async def test_a_buffer_of_lifecycle_events_only_drops_its_oldest(tmp_path: Path) -> None:
    node = NatsNode("late", tmp_path / "nats")
    running = Running(JetStreamConfig(enabled=True, servers=[node.url], buffer=3))
    try:
        before = sample("emovoice_jetstream_dropped_total", {"kind": "lifecycle"})
        for call in ("a", "b", "c", "d", "e"):
            running.bus.publish(running.bus.make_event("call.started", call, "mixed", source="audiosocket", meta={}))
        assert sample("emovoice_jetstream_dropped_total", {"kind": "lifecycle"}) == before + 2
        node.start()
        await eventually(lambda: running.publisher.buffered == 0, what="buffer drained after start")
        nc = await nats.connect(node.url)
        try:
            js = nc.jetstream()
            stored = [json.loads((await js.get_msg("EMOVOICE", seq)).data)["call_id"] for seq in (1, 2, 3)]
            assert stored == ["c", "d", "e"] and (await js.stream_info("EMOVOICE")).state.messages == 3
        finally:
            await nc.close()
    finally:
        await running.stop()
        node.stop()


async def test_server_restart_mid_stream_loses_and_doubles_nothing(nats_node: NatsNode) -> None:
    running = Running(JetStreamConfig(enabled=True, servers=[nats_node.url], site="lyon"))
    try:
        sent = []
        for i in range(400):
            sent.append(running.bus.make_event("score", f"c{i % 10}", "mixed"))
            running.bus.publish(sent[-1])
            if i == 150:
                nats_node.kill()
                await asyncio.sleep(1.0)
                nats_node.start()  # same ports, same store
            await asyncio.sleep(0.002)
        await eventually(lambda: running.publisher.buffered == 0, timeout=60, what="buffer drained after restart")
        nc = await nats.connect(nats_node.url)
        try:
            received: list[str] = []
            handled = asyncio.Event()

            async def handle(event: Event, msg_id: str) -> None:
                received.append(msg_id)
                if len(received) == len(sent):
                    handled.set()

            durable = DurableReader(nc.jetstream(), "EMOVOICE", "count", "emovoice.>")
            reader = asyncio.create_task(durable.run(handle))
            await asyncio.wait_for(handled.wait(), 30)
            await asyncio.sleep(0.5)  # nothing more arrives
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            stored = await ids_in_stream([nats_node.url], "EMOVOICE")  # the stream itself: each id stored once
            assert sorted(stored.values()) == [1] * len(sent) and set(stored) == set(received)
            assert durable.skipped == 0  # a reader started after the restart sees no redelivery to hide
            assert len(received) == len(set(received)) == len(sent)
            assert set(received) == {f"lyon:{e['boot']}:{e['seq']}" for e in sent}
            call_of = {e["seq"]: e["call_id"] for e in sent}
            seqs = [int(r.rsplit(":", 1)[1]) for r in received]
            for call in set(call_of.values()):  # a retry never reorders one call's events
                mine = [q for q in seqs if call_of[q] == call]
                assert mine == sorted(mine)
        finally:
            await nc.close()
    finally:
        await running.stop()


def test_history_applies_an_event_id_once(tmp_path: Path) -> None:
    """A redelivered call.started after call.ended must not make the leg live again."""
    history = CallHistory(str(tmp_path / "h.sqlite3"), keep_live=True)
    bus = EventBus()
    started = bus.make_event("call.started", "c1", "mixed", source="audiosocket", meta={})
    ended = bus.make_event("call.ended", "c1", "mixed", reason="eof", summary={"duration_s": 3})
    assert history.record(started, "lyon:b:1") and history.record(ended, "lyon:b:2")
    assert not history.record(started, "lyon:b:1")
    assert history.get_call("c1")["live"] is False
    history.close()
    reopened = CallHistory(str(tmp_path / "h.sqlite3"), keep_live=True)
    assert not reopened.record(started, "lyon:b:1")  # the id survives a restart of the consumer
    reopened.close()
