"""Restart recovery: the legs a killed daemon left without ``call.ended``, read back from its event log.

Only needed when the log was not closed cleanly (``EventLog.crashed``). The log's files are
read oldest first: a ``call.started`` opens a leg, its ``call.ended`` closes it; the legs
still open at the end were live when the daemon died. A second pass over the lines of those
legs only gives what is known of each: its last event (``last_seen``), the windows scored and
the end of the last one, and hands each of their events to ``observe`` (the daemon rebuilds the class
shares and escalations from them). The daemon then publishes ``call.ended`` with ``reason: lost`` for each.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

CALL_ID = b'"call_id":"'


@dataclass
class LostLeg:
    """What the log tells of a leg that never ended."""

    call_id: str
    role: str
    started: float
    last_seen: float
    windows_scored: int = 0
    duration_s: float = 0.0

    def seen(self, event: dict) -> None:
        """Take in one later event of this leg: its time and, for a score, its window."""
        self.last_seen = max(self.last_seen, event["ts"])
        if event["type"] == "score":
            self.windows_scored += 1
            self.duration_s = max(self.duration_s, event["window"]["end"])

    def summary(self) -> dict[str, float | int]:
        return {"duration_s": self.duration_s, "windows_scored": self.windows_scored,
                "started": self.started, "last_seen": self.last_seen}


def _field(line: bytes, key: bytes) -> bytes:
    """The string value of ``key`` in one of our compact JSON lines (no spaces), without parsing it."""
    start = line.find(key)
    if start < 0:
        return b""
    start += len(key)
    return line[start:line.find(b'"', start)]


def _parse(line: bytes) -> dict | None:
    """One event, or None for a line that is not one (a hand-edited or damaged log must not stop a start)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "call_id" in event and "role" in event and "ts" in event else None


def _open_legs(files: list[Path]) -> dict[tuple[str, str], LostLeg]:
    legs: dict[tuple[str, str], LostLeg] = {}
    for path in files:
        with path.open("rb") as f:
            for line in f:
                if b'"type":"call.started"' in line or b'"type":"call.ended"' in line:
                    event = _parse(line)
                    if event is None:
                        continue
                    key = (event["call_id"], event["role"])
                    if event["type"] == "call.started":
                        legs[key] = LostLeg(*key, started=event["ts"], last_seen=event["ts"])
                    else:
                        legs.pop(key, None)
    return legs


def lost_legs(files: list[Path], observe: Callable[[LostLeg, dict[str, Any]], None] = lambda leg, event: None
              ) -> list[LostLeg]:
    """Legs with a ``call.started`` and no ``call.ended`` in ``files`` (oldest first), with what is known of each;
    ``observe(leg, event)`` sees each of their events in order."""
    legs = _open_legs(files)
    if not legs:
        return []
    ids = {call_id.encode() for call_id, _ in legs}
    for path in files:
        with path.open("rb") as f:
            for line in f:
                event = _parse(line) if _field(line, CALL_ID) in ids else None
                if event is None:
                    continue
                leg = legs.get((event["call_id"], event["role"]))
                if leg is None or event["ts"] < leg.started:
                    continue
                leg.seen(event)
                observe(leg, event)
    return sorted(legs.values(), key=lambda leg: leg.started)
