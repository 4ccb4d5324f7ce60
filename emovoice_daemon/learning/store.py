"""The feature store: per verdict, the features of the windows it concerns (never audio), in SQLite.

One row per window: call id, role, the verdict's subject (an escalation id, or ``call``), the verdict, who gave
it, when, the window's time in the leg, its label (upset or not) and its float32 features. The file is 0600 in a
0700 directory. Rows older than ``retention_days`` are deleted (``purge``, at open and daily); ``delete_call``
removes every row of a call. A later verdict on the same subject replaces the earlier one; when verdicts on one
call disagree about a window, the newest wins (``load``).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    call_id TEXT NOT NULL,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    verdict TEXT NOT NULL,
    given_by TEXT NOT NULL,
    ts REAL NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    upset INTEGER NOT NULL,
    features BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_call ON windows (call_id, subject);
CREATE INDEX IF NOT EXISTS windows_ts ON windows (ts);
"""


@dataclass(frozen=True)
class Row:
    """One labelled window of a verdict."""

    call_id: str
    role: str
    subject: str
    verdict: str
    given_by: str
    ts: float
    start_s: float
    end_s: float
    upset: bool
    features: np.ndarray


@dataclass
class Labelled:
    """Every window the store holds, newest verdict per window: features float32[N, F], upset bool[N], calls str[N]."""

    features: np.ndarray
    upset: np.ndarray
    calls: np.ndarray


def private_file(path: Path) -> None:
    """Create ``path`` (and its directory, 0700) as a 0600 file if it does not exist; tighten an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


class FeatureStore:
    """SQLite store of labelled window features; thread-safe (the daemon writes from a worker thread)."""

    def __init__(self, path: str | Path, retention_days: float = 0.0) -> None:
        self.path, self.retention_days = Path(path).expanduser(), retention_days
        private_file(self.path)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(SCHEMA)
        self.purge()

    def record(self, rows: Iterable[Row]) -> int:
        """Store one verdict's windows (replacing an earlier verdict on the same subject); returns the count."""
        rows = list(rows)
        with self._lock, self._db:
            for subject in {(r.call_id, r.subject) for r in rows}:
                self._db.execute("DELETE FROM windows WHERE call_id = ? AND subject = ?", subject)
            self._db.executemany(
                "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.call_id, r.role, r.subject, r.verdict, r.given_by, r.ts, r.start_s, r.end_s, int(r.upset),
                  np.asarray(r.features, np.float32).tobytes()) for r in rows])
        return len(rows)

    def delete_call(self, call_id: str) -> int:
        """Forget every window of a call; returns how many were deleted."""
        with self._lock, self._db:
            return self._db.execute("DELETE FROM windows WHERE call_id = ?", (call_id,)).rowcount

    def purge(self, now: float | None = None) -> int:
        """Delete windows older than the retention (none with retention 0); returns how many."""
        if self.retention_days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        with self._lock, self._db:
            return self._db.execute("DELETE FROM windows WHERE ts < ?", (cutoff,)).rowcount

    def counts(self) -> dict[str, int]:
        """Calls, windows, and upset windows held."""
        with self._lock:
            calls, windows, upset = self._db.execute(
                "SELECT COUNT(DISTINCT call_id), COUNT(*), COALESCE(SUM(upset), 0) FROM windows").fetchone()
        return {"calls": calls, "windows": windows, "upset_windows": upset}

    def load(self) -> Labelled:
        """Every window once (the newest verdict's label), ordered by call, role and time."""
        with self._lock:
            rows = self._db.execute(
                "SELECT call_id, upset, features FROM windows w WHERE ts = (SELECT MAX(ts) FROM windows v WHERE "
                "v.call_id = w.call_id AND v.role = w.role AND v.start_s = w.start_s) "
                "GROUP BY call_id, role, start_s ORDER BY call_id, role, start_s").fetchall()
        if not rows:
            return Labelled(np.zeros((0, 0), np.float32), np.zeros(0, bool), np.zeros(0, str))
        return Labelled(np.stack([np.frombuffer(f, np.float32) for _, _, f in rows]),
                        np.array([bool(u) for _, u, _ in rows]), np.array([c for c, _, _ in rows]))

    def close(self) -> None:
        with self._lock:
            self._db.close()
