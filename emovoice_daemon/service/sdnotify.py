"""systemd notify protocol (sd_notify(3)): ``READY=1``, ``STATUS=``, ``WATCHDOG=1``, ``STOPPING=1``.

Messages are ``KEY=value`` lines in one datagram to the unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means the abstract namespace). Without that variable every call is a no-op,
so the daemon behaves the same outside systemd. The watchdog pings from a task on the event
loop: when the loop is blocked the pings stop and systemd restarts the service.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to systemd, if it is listening."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_s = watchdog_s
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> "Notifier":
        """``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (honoured only when ``$WATCHDOG_PID`` is unset or ours)."""
        address = os.environ.get("NOTIFY_SOCKET") or None
        watchdog_s = None
        usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False (logged) if systemd cannot be reached."""
        if self._sock is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    async def watchdog(self, status: Callable[[], str]) -> None:
        """Ping ``WATCHDOG=1`` (with a fresh ``STATUS=``) every half watchdog period, until cancelled."""
        if self._sock is None or not self.watchdog_s:
            return
        while True:
            self.send(WATCHDOG="1", STATUS=status())
            await asyncio.sleep(self.watchdog_s / 2)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
