"""AudioSocket listening sockets that survive a flood: a connection cap and back-off when file descriptors run out.

A :class:`Listener` accepts on one port and hands each connection to its owner (the in-process
AudioSocket server, or the worker pool). Over ``audiosocket.max_connections`` live connections a new one
is accepted and closed at once (the call goes on untapped); when ``accept`` fails for want of file
descriptors (EMFILE/ENFILE) the listener pauses for a second instead of spinning. Either way the
connection is counted in :class:`Refusals`: one warning per interval, and a ``connections`` reason for
``/health`` while it lasts.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from typing import Callable

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 1.0  # pause after accept ran out of file descriptors
REPORT_EVERY_S = 10.0  # at most one refusal warning per interval
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def resolve_max_connections(value: int) -> int:
    """``audiosocket.max_connections`` as a number: 0 = the open-file limit less a reserve for everything else."""
    if value:
        return value
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - max(128, soft // 4))


class Refusals:
    """Connections refused (cap reached, or out of file descriptors): logged once per interval, kept for /health."""

    def __init__(self) -> None:
        self._count, self._last_report, self._last = 0, -REPORT_EVERY_S, -float("inf")
        self._why = ""

    def add(self, why: str) -> None:
        now = time.monotonic()
        self._count, self._last, self._why = self._count + 1, now, why
        if now - self._last_report >= REPORT_EVERY_S:
            log.warning("audiosocket: refusing connections (%d since the last report): %s", self._count, why)
            self._count, self._last_report = 0, now

    def problem(self, window_s: float) -> str | None:
        """Why connections were refused in the last ``window_s`` (None: none were)."""
        if time.monotonic() - self._last < window_s:
            return f"AudioSocket connections refused in the last {window_s:g} s: {self._why}"
        return None


class Listener:
    """One listening socket; ``handle(conn, role)`` gets each connection while ``live()`` is under ``limit``."""

    def __init__(self, host: str, port: int, role: str, limit: int, live: Callable[[], int],
                 handle: Callable[[socket.socket, str], None], refusals: Refusals) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=1024)
        self.sock.setblocking(False)
        self.role, self.limit, self.live, self.handle, self.refusals = role, limit, live, handle, refusals
        self._retry: asyncio.TimerHandle | None = None

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self._retry = None
        asyncio.get_running_loop().add_reader(self.sock, self._accept)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    log.warning("audiosocket: accept failed: %s", exc)
                    return
                self.refusals.add(f"out of file descriptors ({exc.strerror}); accepting again in {ACCEPT_RETRY_S:g} s")
                loop = asyncio.get_running_loop()
                loop.remove_reader(self.sock)
                self._retry = loop.call_later(ACCEPT_RETRY_S, self.start)
                return
            if self.live() >= self.limit:
                conn.close()
                self.refusals.add(f"audiosocket.max_connections ({self.limit}) live connections")
                continue
            self.handle(conn, self.role)
