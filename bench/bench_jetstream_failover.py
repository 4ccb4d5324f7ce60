"""JetStream failover at volume: events published vs received across a node kill, and duplicates.

Starts a 3-node nats-server cluster on loopback, publishes ``--rate`` score events/s over ``--calls``
calls for ``--seconds`` through the daemon's ``JetStreamPublisher``, makes the node it is connected
to the stream's leader and SIGKILLs it a third of the way in, while a durable consumer in another
process (tests/support/js_consumer.py) hands each event to its application once. Prints published,
received, duplicates, redeliveries skipped, the buffer's peak and the time from the kill until it drained.

    .venv/bin/python -m bench.bench_jetstream_failover            # ~1 min: 30 s at 500 events/s
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from emovoice_daemon.config import JetStreamConfig
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.jetstream import JetStreamPublisher
from tests.support.js_consumer import received, skipped
from tests.support.nats_servers import NatsCluster


async def run(rate: float, seconds: float, calls: int, workdir: Path) -> dict[str, float]:
    cluster = NatsCluster(workdir)
    out = workdir / "consumer.txt"
    consumer = subprocess.Popen([sys.executable, "-m", "tests.support.js_consumer", str(out), *cluster.urls],
                                stdout=subprocess.DEVNULL, stderr=open(workdir / "consumer.stderr", "wb"))
    bus, publisher = EventBus(), JetStreamPublisher(JetStreamConfig(servers=cluster.urls, site="bench", replicas=3))
    bus.add_sink(publisher.sink)
    task = asyncio.create_task(publisher.run())
    try:
        while not any("emovoice-daemon bench" in n.client_names() for n in cluster.nodes):
            await asyncio.sleep(0.2)  # the publisher connects on this loop
        victim = cluster.node_of("emovoice-daemon bench")
        await cluster.lead("EMOVOICE", victim.name)
        published, peak, killed_at, recovered_at = 0, 0, 0.0, 0.0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while published < elapsed * rate:
                bus.publish(bus.make_event("score", f"call-{published % calls}", "mixed", label="NEUTRAL"))
                published += 1
            if not killed_at and elapsed > seconds / 3:
                victim.kill()
                killed_at = elapsed
            peak = max(peak, publisher.buffered)
            if killed_at and not recovered_at and peak > 100 and publisher.buffered < 50:
                recovered_at = elapsed
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 120
        while (publisher.buffered or len(received(out)) < published) and time.monotonic() < deadline:
            if not recovered_at and publisher.buffered < 50:
                recovered_at = time.monotonic() - start
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        consumer.kill()
        consumer.wait()
        got = received(out)
        return {"published": published, "received": len(got), "unique received": len(set(got)),
                "duplicates delivered": sum(n - 1 for n in Counter(got).values()),
                "redeliveries skipped": skipped(out),
                "buffer peak (events)": peak,
                "kill to buffer drained (s)": round(recovered_at - killed_at, 1) if recovered_at else -1}
    finally:
        await publisher.close(2.0)
        task.cancel()
        consumer.kill()
        consumer.wait()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=200, help="calls the events are spread over")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(args.rate, args.seconds, args.calls, Path(tmp)))
    print(f"{args.rate:.0f} events/s for {args.seconds:.0f} s over {args.calls} calls, 3-node R3 cluster, "
          "publisher's node (stream leader) SIGKILLed at 1/3:")
    for name, value in figures.items():
        print(f"  {name:28s} {value}")


if __name__ == "__main__":
    main()
