"""Beyond one call server, the fault case: a daemon publishes to a 3-node JetStream cluster on loopback while
calls run; the node it is connected to, made the stream's leader first, is SIGKILLed mid-stream. A durable
consumer in another process receives every event the daemon published, and the application none twice."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from emovoice_daemon.tools.simulate import play_call
from tests.conftest import stop_daemon
from tests.support.js_consumer import received, skipped
from tests.support.nats_servers import NatsCluster, ids_in_stream, wait_until
from tests.support.scripted import tone_call
from tests.support.scripted_daemon import start_scripted_daemon

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CALLS, CALL_S, KILL_AFTER_S = 10, 20, 7


async def test_node_kill_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path)
    out = tmp_path / "consumer.txt"
    consumer = subprocess.Popen([sys.executable, "-m", "tests.support.js_consumer", str(out), *cluster.urls],
                                stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "consumer.stderr", "wb"))
    daemon = start_scripted_daemon(tmp_path, {"jetstream": {"enabled": True, "servers": cluster.urls,
                                                            "site": "lyon", "replicas": 3}})
    try:
        wait_until(lambda: any("emovoice-daemon lyon" in n.client_names() for n in cluster.nodes),
                                    "the daemon never connected to NATS")
        calls = [asyncio.create_task(play_call("127.0.0.1", daemon.audiosocket_port,
                                               tone_call([("calm", CALL_S / 2), ("angry", CALL_S / 2)]),
                                               str(uuid.uuid4()))) for _ in range(CALLS)]
        victim = cluster.node_of("emovoice-daemon lyon")
        await cluster.lead("EMOVOICE", victim.name)  # the worst node to lose: reconnect and leader election at once
        await asyncio.sleep(KILL_AFTER_S)
        assert cluster.stream_leader("EMOVOICE") == victim.name
        before_kill = len(daemon.events())
        victim.kill()
        await asyncio.gather(*calls)
        daemon.wait_for(lambda ev: sum(e["type"] == "call.ended" for e in ev) == CALLS)
        stop_daemon(daemon)  # its last events are flushed to JetStream before it exits
        published = [e["seq"] for e in daemon.events()]
        deadline = time.monotonic() + 60
        while len(received(out)) < len(published) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a late duplicate would show up now
        got = received(out)
        dupes = sum(n - 1 for n in Counter(mid for mid, _ in got).values())
        stored = await ids_in_stream(cluster.urls, "EMOVOICE")  # the stream itself, not what the reader let through
        stored_twice = sum(n - 1 for n in stored.values())
        stderr = daemon.stderr_path.read_text()
        report = (f"killed {victim.name} (the daemon's node and the stream leader) after {before_kill} events; "
                  f"published {len(published)}, "
                  f"received {len(got)}, stored twice in the stream {stored_twice}, duplicates delivered {dupes}, "
                  f"redeliveries skipped by the reader {skipped(out)}, "
                  f"publish retries logged: {'publishing failed' in stderr}")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "jetstream_node_kill.txt").write_text(report + "\n")
        print(report)
        assert 0 < before_kill < len(published)  # the node died mid-stream
        assert "nats: reconnected to" in stderr
        assert dupes == 0 and stored_twice == 0 and len(stored) == len(published)
        assert set(stored) == {mid for mid, _ in got}
        assert sorted(seq for _, seq in got) == sorted(published)
    finally:
        stop_daemon(daemon)
        consumer.kill()
        consumer.wait()
        cluster.stop()
