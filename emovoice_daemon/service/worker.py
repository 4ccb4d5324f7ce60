"""A worker process of :class:`~emovoice_daemon.service.workers.WorkerPool`: AudioSocket legs scored here.

Started by the daemon as ``python -m emovoice_daemon.service.worker INDEX EVENTS_FD FDS_FD`` with its
config (JSON) on stdin. It loads the model, receives connections on ``FDS_FD`` (one role name and
one socket per message) and writes each event, ``{"closed": true}`` when a connection ends and
``{"ready": true}`` once, and every second its metrics (``{"stats": ...}``, counters and histograms, see
:func:`emovoice_daemon.outputs.metrics.snapshot`), as JSON lines on ``EVENTS_FD``. SIGHUP re-reads the escalation settings;
SIGTERM, or the main process going away, ends the legs (``shutdown``) and exits.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from emovoice_daemon.calls import CallManager
from emovoice_daemon.config import Config, parse_config
from emovoice_daemon.ingest.audiosocket import AudioSocketServer
from emovoice_daemon.judgement.policy import policy_factory, with_model_defaults
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.scoring.models.loader import load_classifier
from emovoice_daemon.service.lifecycle import reload_config, stop_on_signals

STATS_INTERVAL_S = 1.0


class Worker:
    """A worker process: model, engine and legs of the connections the main process sends."""

    def __init__(self, config: Config, events: socket.socket, fds: socket.socket) -> None:
        self.config, self._events_sock, self._fds = config, events, fds
        self.notifier = None  # reload_config's interface: workers serve no agent pages
        self.model_escalation: dict = {}
        self._writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        """Serve until SIGTERM or until the main process goes away; then end the legs and exit."""
        cfg = self.config
        stop = stop_on_signals()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_config, self)
        model = dataclasses.replace(cfg.model, threads=cfg.model.threads or 1)  # the pool spreads calls over the cores
        classifier = await asyncio.to_thread(load_classifier, model)
        cfg.escalation = with_model_defaults(cfg.escalation, classifier.escalation)
        self.model_escalation = classifier.escalation
        self.engine = ScoringEngine(classifier, cfg.pipeline, cfg.engine)
        await self.engine.start()
        bus = EventBus()
        bus.add_sink(lambda event: self._send({"event": event}))
        self.calls = CallManager(self.engine, bus, policy_factory(cfg.escalation),
                                 {"name": classifier.name, "trained": classifier.trained})
        self.audiosocket = AudioSocketServer(cfg.audiosocket, self.calls)
        reader, self._writer = await asyncio.open_unix_connection(sock=self._events_sock)
        loop.add_reader(self._fds, self._adopt)
        self._send({"ready": True})
        stats = asyncio.create_task(self._report_stats())
        main_gone = asyncio.create_task(reader.read())  # the main process never writes: EOF means it is gone
        await asyncio.wait([main_gone, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        loop.remove_reader(self._fds)
        await self.audiosocket.close_all()
        await self.calls.end_all("shutdown")
        await self.engine.stop()
        stats.cancel()
        self._send({"stats": metrics.snapshot()})  # the final totals
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._writer.close()

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self._send({"stats": metrics.snapshot()})

    def _adopt(self) -> None:
        """Serve the connections the main process sent (one role name and one socket per message)."""
        while True:
            try:
                role, fds, _, _ = socket.recv_fds(self._fds, 64, 1)
            except (BlockingIOError, InterruptedError):
                return
            if not fds:
                return  # the main process closed its end
            task = asyncio.create_task(self.audiosocket.adopt(role.decode(), socket.socket(fileno=fds[0])))
            task.add_done_callback(lambda _: self._send({"closed": True}))

    def _send(self, msg: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an emovoice worker process (started by the daemon)")
    parser.add_argument("index", type=int)
    parser.add_argument("events_fd", type=int)
    parser.add_argument("fds_fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{args.index} %(name)s: %(message)s")
    raw = json.loads(sys.stdin.read())
    source = raw.pop("source")
    config = parse_config(json.dumps(raw), source)  # JSON is YAML: the same checks as the daemon's file
    events = socket.socket(fileno=args.events_fd)
    fds = socket.socket(fileno=args.fds_fd)
    fds.setblocking(False)
    asyncio.run(Worker(config, events, fds).run())
    logging.shutdown()
    os._exit(0)  # everything is sent and flushed; torch's interpreter teardown alone takes seconds on a busy box


if __name__ == "__main__":
    main()
