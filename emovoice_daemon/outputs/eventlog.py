"""Append-only JSONL event log: one JSON object per line, crash-safe and rotated by size.

Each event is one ``write(2)`` of one whole line on an ``O_APPEND`` descriptor, so a killed
daemon leaves at most one partial last line; opening the log cuts such a torn tail off. A
write that fails (disk full) is undone with ``ftruncate`` so the next line starts clean, and its
line waits in memory (up to ``backlog_bytes``, then new events are lost and counted) to be written,
in order, by the next write or ``flush()``. The
file is ``flock``-ed: a second daemon on the same log fails at once instead of interleaving.
When a line would take the file past ``rotate_bytes`` the file becomes ``<name>.1`` (older
ones shift up to ``<name>.<keep>``, the oldest is deleted) and a new file is started.
``<name>.running`` exists while a daemon has the log open: found at open, it says the last
daemon did not close it (it was killed), so legs it left open must be recovered.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from emovoice_daemon.outputs import metrics

log = logging.getLogger(__name__)


class EventLogError(Exception):
    """The event log cannot be opened (locked by another process, or not writable)."""


def repair_tail(fd: int, path: Path) -> int:
    """Cut a partial last line (no trailing newline) off the file; returns the bytes removed."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    block, pos = 65536, size
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        pos = start
    else:
        keep = 0
    if keep < size:
        os.ftruncate(fd, keep)
        os.fsync(fd)
        log.warning("event log %s: removed a torn last line of %d bytes (left by a crash)", path, size - keep)
    return size - keep


def _open_locked(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise EventLogError(f"event log {path} is in use by another process (is another daemon running?)") from None
    return fd


class EventLog:
    """Appends events to a JSONL file, one ``write(2)`` per line."""

    def __init__(self, path: str | os.PathLike[str], rotate_bytes: int = 100_000_000, keep: int = 5,
                 fsync_interval_s: float = 1.0, backlog_bytes: int = 16 * 2**20) -> None:
        self.path = Path(path)
        self.rotate_bytes, self.keep, self.fsync_interval_s = rotate_bytes, keep, fsync_interval_s
        self.backlog_bytes = backlog_bytes
        self.marker = self.path.with_name(f"{self.path.name}.running")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = _open_locked(self.path)
            self.crashed = self.marker.exists()  # the previous daemon never closed the log
            self.marker.touch()
        except OSError as exc:
            raise EventLogError(f"event log {self.path}: cannot open: {exc.strerror}") from None
        repair_tail(self._fd, self.path)
        self.size = os.fstat(self._fd).st_size
        self._synced = time.monotonic()
        self._backlog: deque[bytes] = deque()
        self._backlog_size = 0
        self.error = ""  # why the last write failed, while lines wait
        self.lost = 0  # events dropped for good since the log could not write

    @property
    def pending(self) -> int:
        """Events waiting in memory for the file to take them."""
        return len(self._backlog)

    def write(self, event: dict[str, Any]) -> None:
        """Append one event (after any still waiting); a failed write is logged, counted and leaves no partial line."""
        if self._fd is None:
            raise EventLogError(f"event log {self.path} is closed")
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        if self._backlog_size + len(line) > self.backlog_bytes:
            self.lost += 1
            metrics.EVENTLOG_LOST.inc()
        else:
            self._backlog.append(line)
            self._backlog_size += len(line)
        self.flush()

    def flush(self) -> bool:
        """Write the events waiting, in order; False while the file cannot take them."""
        while self._backlog:
            line = self._backlog[0]
            try:
                if self.size and self.size + len(line) > self.rotate_bytes:
                    self.rotate()
                self._append(line)
            except OSError as exc:
                self._write_failed(exc)
                return False
            self._backlog.popleft()
            self._backlog_size -= len(line)
        metrics.EVENTLOG_PENDING.set(0)
        if self.error:
            log.warning("event log %s: writing again (%d events lost)", self.path, self.lost)
            self.error = ""
        if time.monotonic() - self._synced >= self.fsync_interval_s:
            self.sync()
        return True

    def _append(self, line: bytes) -> None:
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            os.ftruncate(self._fd, self.size)  # drop the partial line
            raise
        self.size += len(line)

    def _write_failed(self, exc: OSError) -> None:
        metrics.EVENTLOG_ERRORS.inc()
        metrics.EVENTLOG_PENDING.set(len(self._backlog))
        if not self.error:
            log.error("event log %s: cannot write (%s); events wait in memory (up to %d MiB), then are lost",
                      self.path, exc.strerror, self.backlog_bytes // 2**20)
        self.error = exc.strerror or str(exc)

    def rotate(self) -> None:
        """Move the current file to ``<name>.1`` (shifting older ones) and start a new one."""
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        old_fd = self._fd
        os.fsync(old_fd)
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fd = _open_locked(self.path)
        os.close(old_fd)
        self.size = 0
        log.info("event log %s rotated", self.path)

    def sync(self) -> None:
        """fsync what was written."""
        if self._fd is not None:
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def files(self) -> list[Path]:
        """The log's files that exist, oldest first (``<name>.<keep>`` .. ``<name>.1``, ``<name>``)."""
        names = [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.keep, 0, -1)] + [self.path]
        return [p for p in names if p.exists()]

    def close(self, clean: bool = True) -> None:
        """Write what waits (what cannot be is logged as lost), fsync and close; safe to call twice.
        ``clean=False`` (legs may be left without call.ended) keeps the marker for the next start."""
        if self._fd is None:
            return
        if not self.flush():
            log.error("event log %s: %d events could not be written (%s) and are lost", self.path, self.pending,
                      self.error)
        self.sync()
        os.close(self._fd)
        self._fd = None
        if clean:
            self.marker.unlink(missing_ok=True)
