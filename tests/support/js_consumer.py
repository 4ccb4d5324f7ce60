"""A consumer in its own process: ``python -m tests.support.js_consumer OUT SERVER...`` appends one line
``<msg id> <seq>`` per event the durable reader hands on (``OUT``), and ``OUT.skipped`` holds how many
redeliveries it skipped (no file: none); runs until killed."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from emovoice_daemon.config import JetStreamConfig
from emovoice_daemon.outputs.events import Event
from emovoice_daemon.outputs.jetstream import DurableReader, connect, ensure_stream, retrying, site_filter


def skipped(path: Path) -> int:
    """Redeliveries the consumer writing ``path`` skipped (read it once the consumer has stopped)."""
    count = path.with_suffix(".skipped")
    return int(count.read_text()) if count.exists() else 0


def received(path: Path) -> list[tuple[str, int]]:
    """The (msg id, seq) lines written so far."""
    if not path.exists():
        return []
    return [(mid, int(seq)) for mid, seq in (line.split() for line in path.read_text().splitlines() if line)]


async def main(out: Path, servers: list[str]) -> None:
    cfg = JetStreamConfig(servers=servers, replicas=len(servers))
    nc = await connect(cfg, "test-consumer")
    js = nc.jetstream()
    await retrying("stream", lambda: ensure_stream(js, cfg))
    reader = DurableReader(js, cfg.stream, "test-consumer", site_filter())
    written = 0
    with out.open("a", buffering=1) as lines:
        async def handle(event: Event, msg_id: str) -> None:
            nonlocal written
            lines.write(f"{msg_id} {event['seq']}\n")
            if reader.skipped != written:
                written = reader.skipped
                out.with_suffix(".skipped").write_text(str(written))

        await reader.run(handle)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
