"""Worker processes: AudioSocket calls scored on every core, one event stream in the main process.

With ``service.workers`` > 1 the main process owns the AudioSocket listeners, the API, the
event bus and its outputs (log, history, notifier, webhook); it accepts each connection and
hands the socket (``SCM_RIGHTS``) to the worker with the fewest live connections. A worker
(:mod:`emovoice_daemon.service.worker`) runs its own model, engine and legs, and sends
every event it makes, and a note when a connection ends, as JSON lines back to the main process,
which numbers them into the one daemon-wide sequence; their metrics are added into the main
process's ``/metrics`` and health (windows by outcome). A worker that dies is restarted; the legs it
was serving get ``call.ended`` (reason ``worker_lost``, with what the main process saw of each: the
summary of a ``lost`` leg) from the main process, the other workers' calls go on. SIGHUP reaches every worker (escalation settings); SIGTERM drains them.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import socket
import sys
import time
from typing import Any

from emovoice_daemon.config import Config, resolve_workers
from emovoice_daemon.ingest.listener import Listener, Refusals, resolve_max_connections
from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.outputs.recovery import LostLeg

log = logging.getLogger(__name__)

RESTART_DELAY_S = (1.0, 30.0)  # first and longest wait before restarting a worker that died
STABLE_S = 30.0  # a worker that ran this long restarts after the first delay again


@dataclasses.dataclass(eq=False)
class _Worker:
    """The main process's handle on one worker process."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    fds: socket.socket | None = None  # connections are sent here
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    connections: int = 0
    legs: dict[tuple[str, str], LostLeg] = dataclasses.field(default_factory=dict)  # live legs, as far as seen
    started: float = 0.0


class WorkerPool:
    """Listens for AudioSocket connections and spreads them over worker processes (the AudioSocketServer interface)."""

    def __init__(self, config: Config, bus: EventBus) -> None:
        self.config, self.bus = config, bus
        self.workers = [_Worker(i) for i in range(resolve_workers(config.service.workers))]
        self._listeners: list[Listener] = []
        self.refusals = Refusals()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = self._started = False

    async def start(self) -> None:
        """Start every worker (ready: model loaded), then listen."""
        for worker in self.workers:
            self._watch(worker)
        ready = asyncio.create_task(asyncio.wait([asyncio.create_task(w.ready.wait()) for w in self.workers]))
        await asyncio.wait([ready, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self.close_all()
            raise OSError("a worker process exited while starting; its error is logged above")
        self._started = True
        cfg = self.config.audiosocket
        limit = resolve_max_connections(cfg.max_connections)
        def live() -> int:
            return sum(w.connections for w in self.workers)

        metrics.AUDIOSOCKET_CONNECTIONS.set_function(live)
        for role, port in [(cfg.role, cfg.port), *cfg.role_ports.items()]:
            listener = Listener(cfg.host, port, role, limit, live,
                                self._dispatch, self.refusals)
            listener.start()
            self._listeners.append(listener)
            log.info("audiosocket listening on %s (role %s, %d worker processes, at most %d connections)",
                     listener.address, role, len(self.workers), limit)

    @property
    def address(self) -> str:
        """host:port of the main listener."""
        return self._listeners[0].address if self._listeners else ""

    @property
    def live_legs(self) -> int:
        return sum(len(w.legs) for w in self.workers)

    def health(self) -> list[dict[str, Any]]:
        """Per worker: pid, live legs, whether it is serving."""
        return [{"pid": w.proc.pid if w.proc else None, "legs": len(w.legs), "ready": w.ready.is_set()}
                for w in self.workers]

    def problem(self) -> str | None:
        """Worker processes down (restarting) once the pool has started, for /health."""
        down = [str(w.index) for w in self.workers if not w.ready.is_set()]
        if not self._started or not down:
            return None
        return f"worker process {', '.join(down)} of {len(self.workers)} is down (restarting)"

    def reload(self) -> None:
        """SIGHUP every worker (each re-reads the escalation settings)."""
        self._signal(signal.SIGHUP)

    async def stop_accepting(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    async def close_all(self) -> None:
        """Drain every worker (SIGTERM: their legs end with 'shutdown'); returns when all have exited.

        Cancelled (the drain deadline passed), it kills the workers still running."""
        self._stopping = True
        self._signal(signal.SIGTERM)
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            self._signal(signal.SIGKILL)
            raise

    def _signal(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(sig)

    def _dispatch(self, conn: socket.socket, role: str) -> None:
        with conn:  # the worker holds its own copy
            self._hand_over(conn, role)

    def _hand_over(self, conn: socket.socket, role: str) -> None:
        ready = [w for w in self.workers if w.ready.is_set()]
        if not ready:
            log.warning("audiosocket: no worker process is ready; closing the connection from %s", conn.getpeername())
            return
        worker = min(ready, key=lambda w: w.connections)
        try:
            socket.send_fds(worker.fds, [role.encode()], [conn.fileno()])
        except OSError as exc:
            log.warning("audiosocket: cannot hand a connection to worker %d: %s", worker.index, exc)
            return
        worker.connections += 1

    def _watch(self, worker: _Worker) -> None:
        task = asyncio.create_task(self._supervise(worker), name=f"worker-{worker.index}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervise(self, worker: _Worker) -> None:
        """Run the worker; restart it when it dies (unless stopping), with back-off when it keeps dying."""
        delay = RESTART_DELAY_S[0]
        while True:
            await self._run(worker)
            if self._stopping or not self._started:
                return
            delay = RESTART_DELAY_S[0] if time.monotonic() - worker.started > STABLE_S else min(2 * delay,
                                                                                             RESTART_DELAY_S[1])
            log.error("worker %d exited with status %s; %d of its legs ended; restarting in %.0f s",
                      worker.index, worker.proc.returncode, len(worker.legs), delay)
            self._end_lost_legs(worker)
            metrics.EXPOSED.retire(worker.index)
            await asyncio.sleep(delay)
            if self._stopping:
                return

    async def _run(self, worker: _Worker) -> None:
        """One life of a worker process: spawn, relay its messages until it exits."""
        events_main, events_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds_main, fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds_main.setblocking(False)
        worker.started, worker.connections, worker.fds = time.monotonic(), 0, fds_main
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "emovoice_daemon.service.worker", str(worker.index),
            str(events_child.fileno()), str(fds_child.fileno()),
            pass_fds=(events_child.fileno(), fds_child.fileno()), stdin=asyncio.subprocess.PIPE)
        events_child.close()
        fds_child.close()
        worker.proc.stdin.write(json.dumps(_config_dict(self.config)).encode())
        worker.proc.stdin.close()
        reader, writer = await asyncio.open_unix_connection(sock=events_main, limit=2**24)
        try:
            while line := await reader.readline():
                self._message(worker, json.loads(line))
        finally:
            writer.close()
            fds_main.close()
            worker.ready.clear()
            await worker.proc.wait()

    def _message(self, worker: _Worker, msg: dict[str, Any]) -> None:
        if "event" in msg:
            event = msg["event"]
            key = (event["call_id"], event["role"])
            if event["type"] == "call.started":
                worker.legs[key] = LostLeg(*key, started=event["ts"], last_seen=event["ts"])
            elif event["type"] == "call.ended":
                worker.legs.pop(key, None)
            elif key in worker.legs:
                worker.legs[key].seen(event)
            self.bus.forward(event)
            metrics.LIVE_LEGS.set(self.live_legs)
        elif "stats" in msg:
            metrics.EXPOSED.update(worker.index, msg["stats"])
        elif "closed" in msg:
            worker.connections -= 1
        elif "ready" in msg:
            log.info("worker %d ready (pid %d)", worker.index, worker.proc.pid)
            worker.ready.set()

    def _end_lost_legs(self, worker: _Worker) -> None:
        """call.ended (reason 'worker_lost') for each leg a dead worker was serving."""
        for leg in worker.legs.values():
            self.bus.publish(self.bus.make_event("call.ended", leg.call_id, leg.role, reason="worker_lost",
                                                 summary=leg.summary()))
        worker.legs.clear()
        metrics.LIVE_LEGS.set(self.live_legs)


def _config_dict(config: Config) -> dict[str, Any]:
    """The config as the worker re-parses it: internal fields left out, a section that records the keys its file
    gave (``given``) with only those, so the worker resolves the others as the main process did."""
    return {"source": config.source, **{f.name: _section_dict(getattr(config, f.name))
                                        for f in dataclasses.fields(Config) if not f.metadata.get("internal")}}


def _section_dict(section: Any) -> dict[str, Any]:
    given, values = getattr(section, "given", None), dataclasses.asdict(section)
    return {f.name: values[f.name] for f in dataclasses.fields(section)
            if not f.metadata.get("internal") and (given is None or f.name in given)}
