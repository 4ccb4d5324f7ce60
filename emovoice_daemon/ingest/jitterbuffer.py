"""A small reorder buffer for one RTP stream (one SSRC), ordered by 16-bit sequence number.

Packets are held until ``depth`` later packets have arrived, so a packet delayed by up to
``depth`` packet times is put back in order. The first packet sets the play-out point and
is released at once (no start-up delay), so a packet older than the first one is late. A sequence number that is still missing when
its slot must be released is reported as lost (``None``) so the caller can conceal it.
Late packets (behind the play-out point) and duplicates are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number ``b`` to ``a`` (mod 2^16, in [-32768, 32767])."""
    return (a - b + _SEQ_HALF) % _SEQ_MOD - _SEQ_HALF


@dataclass
class BufferStats:
    received: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    resyncs: int = 0


class JitterBuffer(Generic[T]):
    """Reorders items by sequence number; ``push`` returns what is ready to play, in order.

    ``depth`` is how many packets a slot waits for a late packet. A jump further than
    ``max_gap`` (either way) is a new stream position: the buffer is flushed and restarts there
    instead of reporting thousands of lost packets.
    """

    def __init__(self, depth: int = 3, max_gap: int = 100) -> None:
        if depth < 0 or max_gap <= depth:
            raise ValueError("need depth >= 0 and max_gap > depth")
        self.depth = depth
        self.max_gap = max_gap
        self.stats = BufferStats()
        self._next: int | None = None  # next sequence number to release
        self._held: dict[int, T] = {}

    def push(self, seq: int, item: T) -> list[T | None]:
        """Add one packet; returns released items in order, ``None`` for each lost packet."""
        out: list[T | None] = []
        if self._next is None:
            self._next = seq
        delta = seq_delta(seq, self._next)
        if delta < 0 and -delta <= self.max_gap:
            self.stats.late += 1
            return out
        if abs(delta) > self.max_gap:
            out = self.flush()
            self.stats.resyncs += 1
            self._next = seq
        if seq in self._held:
            self.stats.duplicate += 1
            return out
        self.stats.received += 1
        self._held[seq] = item
        out.extend(self._release())
        return out

    def flush(self) -> list[T | None]:
        """Release everything held (the stream ended), concealing gaps between held packets."""
        out: list[T | None] = []
        while self._held:
            out.append(self._pop_next())
        return out

    def _release(self) -> list[T | None]:
        out: list[T | None] = []
        while self._held and (self._next in self._held or self._span() > self.depth):
            out.append(self._pop_next())
        return out

    def _span(self) -> int:
        """Distance from the play-out point to the newest held packet."""
        assert self._next is not None
        return max(seq_delta(s, self._next) for s in self._held)

    def _pop_next(self) -> T | None:
        assert self._next is not None
        seq = self._next
        self._next = (seq + 1) % _SEQ_MOD
        if seq in self._held:
            return self._held.pop(seq)
        self.stats.lost += 1
        return None
