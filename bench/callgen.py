"""AudioSocket call generator process for ``bench_capacity``: paced 20 ms frames on many TCP connections.

Runs as ``python -m bench.callgen`` with a pickled plan on stdin (see :func:`main`) and writes a
pickled result to stdout. It imports nothing of the daemon (no torch), so its CPU is the cost of
sending calls, not of loading a model. One thread sends every call: each connection gets its
next frame when it is due (a heap of due times), the way Asterisk's channel timers drive
``AudioSocket()``; frames the kernel cannot take at once are kept and sent first next time. A frame counts
as sent when the kernel has taken its last byte, so its lateness (and ``bench_capacity``'s end-to-end lag,
measured from that time) includes any backlog the generator or the receiver built up.
"""
from __future__ import annotations

import errno
import heapq
import pickle
import resource
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.02
SLACK_S = 0.0005  # frames due within this are sent in the same pass


@dataclass
class Plan:
    """What one generator process plays: ``calls`` of (first frame, audio index, start offset s) from ``t0``."""

    host: str
    port: int
    t0: float  # time.monotonic() of the first call's start (the clock is shared by every process)
    audio: list[list[bytes]]  # per distinct audio: its 20 ms audio frames, encoded by the daemon's encoder
    calls: list[tuple[bytes, int, float]]


@dataclass
class Result:
    """Per call: the monotonic time the kernel took each frame's last byte (UUID first); errors; process CPU."""

    sent_at: list[np.ndarray]
    errors: list[str]
    cpu_s: float
    lateness_s: np.ndarray  # per frame sent: the kernel took its last byte minus due


class _Call:
    def __init__(self, first: bytes, frames: list[bytes], start: float) -> None:
        self.frames = [first, *frames]
        self.start = start
        self.next = 0
        self.pending = b""
        self.queued = self.taken = 0  # bytes queued for the kernel / taken by it so far
        self.unsent: deque[tuple[int, int]] = deque()  # frames (partly) in pending: (index, queued at its end)
        self.sock: socket.socket | None = None
        self.sent_at = np.zeros(len(self.frames))
        self.lateness = np.zeros(len(self.frames))
        self.error = ""

    def due(self, i: int) -> float:
        return self.start + i * FRAME_S


def _connect(call: _Call, host: str, port: int) -> None:
    sock = socket.create_connection((host, port))
    sock.setblocking(False)
    call.sock = sock


def _send(call: _Call, now: float) -> bool:
    """Queue the call's next frame after what was pending and send what the kernel takes; False when it is over."""
    sock = call.sock
    data = call.pending + call.frames[call.next]
    call.queued += len(call.frames[call.next])
    call.unsent.append((call.next, call.queued))
    call.next += 1
    try:
        n = sock.send(data)
    except BlockingIOError:
        n = 0
    except OSError as exc:
        call.error = f"frame {call.next - 1}: {exc.strerror}"
        return False
    call.pending = data[n:]
    _taken(call, n, now)
    _drain_replies(sock)
    return call.next < len(call.frames)


def _taken(call: _Call, n: int, now: float) -> None:
    """The kernel took ``n`` more bytes at ``now``: frames whose last byte was among them are sent."""
    call.taken += n
    while call.unsent and call.unsent[0][1] <= call.taken:
        i, _ = call.unsent.popleft()
        call.sent_at[i] = now
        call.lateness[i] = now - call.due(i)


def _drain_replies(sock: socket.socket) -> None:
    """Discard what the daemon sends back (keep-alive silence), as Asterisk plays it."""
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.ECONNRESET):
            raise


def _finish(call: _Call) -> None:
    """Flush what is pending, then close (EOF), as Asterisk ends a call."""
    deadline = time.monotonic() + 5.0
    call.sock.setblocking(True)
    call.sock.settimeout(max(deadline - time.monotonic(), 0.1))
    try:
        if call.pending:
            call.sock.sendall(call.pending)
            _taken(call, len(call.pending), time.monotonic())
            call.pending = b""
    except OSError as exc:
        call.error = call.error or f"closing: {exc}"
    call.sock.close()


def play(plan: Plan) -> Result:
    """Play every call of ``plan`` in real time; returns when the last one has ended."""
    calls = [_Call(first, plan.audio[a], plan.t0 + offset) for first, a, offset in plan.calls]
    heap = [(c.start, i) for i, c in enumerate(calls)]
    heapq.heapify(heap)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    while heap:
        due, i = heap[0]
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now = time.monotonic()
        while heap and heap[0][0] <= now + SLACK_S:
            _, i = heapq.heappop(heap)
            call = calls[i]
            try:
                if call.sock is None:
                    _connect(call, plan.host, plan.port)
                more = _send(call, now)
            except OSError as exc:
                call.error, more = str(exc), False
            if more:
                heapq.heappush(heap, (call.due(call.next), i))
            elif call.sock is not None:
                _finish(call)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return Result([c.sent_at for c in calls], [c.error for c in calls], cpu,
                  np.concatenate([c.lateness[c.sent_at > 0] for c in calls]) if calls else np.zeros(0))


def main() -> int:
    plan: Plan = pickle.load(sys.stdin.buffer)
    result = play(plan)
    pickle.dump(result, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
