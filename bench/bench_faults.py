"""Fault benchmark: nothing lost, nothing polluted, against a daemon subprocess (issue 17).

    sudo .venv/bin/python -m bench.bench_faults          # root: the event log goes on a small tmpfs

Scenarios, each printed with its figures (exit status 1 if a target is missed):
- hostile connections: ``--hostile`` of each ``loadgen.HOSTILE`` kind (UUID only, nothing, empty or
  odd audio, truncated, malformed); counted as calls (``call.started``, legs metric): target 0.
- overload with tail audio: ``--overload-calls`` callers each send ``--seconds`` of audio as fast
  as they can and hang up at once; audio lost (sent minus each ``call.ended`` duration): target 0 s.
- SIGTERM under load: half the callers hung up with windows still queued, half live; every
  ``call.started`` has one ``call.ended``, ``(boot, seq)`` unique, no traceback in the log output.
- kill -9 under load, then a restart: the same, the killed run's legs ending as ``lost``.
- disk full: the event log's tmpfs filled up during calls; seconds until ``/health`` says degraded,
  seconds until ok once space is freed, events lost (target 0: they wait in memory).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from bench.bench_load import Daemon, report
from bench.loadgen import HOSTILE, FakeSystemd, healthy, hostile, voiced_audio
from emovoice_daemon.tools.simulate import audiosocket_frames

HOST = "127.0.0.1"


class FaultDaemon(Daemon):
    """bench_load's daemon with the event log in ``log_dir`` and the default back-pressure (``max_lag_s`` 1 s)."""

    def __init__(self, workdir: Path, notify: FakeSystemd, log_dir: Path) -> None:
        super().__init__(workdir, notify, idle_timeout_s=3.0)
        self.log_path = log_dir / "events.jsonl"
        config = yaml.safe_load(self.config_path.read_text())
        config["events"]["log_path"] = str(self.log_path)
        del config["engine"]["max_lag_s"]
        self.config_path.write_text(yaml.safe_dump(config))

    async def health(self, session: aiohttp.ClientSession) -> dict:
        async with session.get(f"http://{HOST}:{self.api_port}/health") as resp:
            return await resp.json()

    async def idle(self, timeout: float = 120) -> None:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(timeout):
                while (await self.health(session))["legs"]:
                    await asyncio.sleep(0.2)


def ended_by_call(events: list[dict]) -> dict[str, dict]:
    return {e["call_id"]: e for e in events if e["type"] == "call.ended"}


def log_consistency(events: list[dict]) -> tuple[str, list[str]]:
    """started = ended per leg, (boot, seq) unique and in order."""
    started = Counter((e["call_id"], e["role"]) for e in events if e["type"] == "call.started")
    ended = Counter((e["call_id"], e["role"]) for e in events if e["type"] == "call.ended")
    ids = [(e["boot"], e["seq"]) for e in events]
    problems = []
    if started != ended:
        problems.append(f"{sum((started - ended).values())} call.started without call.ended, "
                        f"{sum((ended - started).values())} call.ended without call.started")
    if len(set(ids)) != len(ids) or ids != sorted(ids):
        problems.append(f"{len(ids) - len(set(ids))} duplicate (boot, seq) ids, in order: {ids == sorted(ids)}")
    return (f"{sum(started.values())} call.started, {sum(ended.values())} call.ended, {len(ids)} events with "
            f"{len(set(ids))} unique (boot, seq) over {len({b for b, _ in ids})} boots"), problems


async def hostile_round(daemon: FaultDaemon, per_kind: int) -> tuple[list[str], list[str]]:
    before = {e["call_id"] for e in daemon.events()}
    results = await asyncio.gather(*(hostile(HOST, daemon.as_port, kind) for kind in HOSTILE for _ in range(per_kind)))
    await asyncio.sleep(0.5)
    events = [e for e in daemon.events() if e["call_id"] not in before]
    calls = {e["call_id"] for e in events if e["type"] == "call.started"}
    open_ = sum(r.closed_after_s is None for r in results)
    line = (f"hostile connections: {len(results)} ({per_kind} each of {len(HOSTILE)} kinds), counted as calls: "
            f"{len(calls)} (target 0), left open by the daemon: {open_}")
    return [line], ([f"{len(calls)} hostile connections became calls"] if calls else [])


def send_at_once(port: int, call_id: str, seconds: float) -> int:
    """A whole call written as fast as the socket takes it, then hang up; returns the samples sent."""
    import socket

    pcm = voiced_audio(seconds, seed=hash(call_id) % 1000)
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(b"".join(audiosocket_frames(call_id, pcm)))
    return len(pcm)


async def overload_round(daemon: FaultDaemon, calls: int, seconds: float) -> tuple[list[str], list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(calls)]
    t0 = time.monotonic()
    sent = await asyncio.gather(*(asyncio.to_thread(send_at_once, daemon.as_port, c, seconds) for c in ids))
    await daemon.idle()
    took = time.monotonic() - t0
    ended = ended_by_call(daemon.events())
    lost_s = sum(max(0.0, n / 8000 - ended[c]["summary"]["duration_s"]) for c, n in zip(ids, sent) if c in ended)
    missing = [c for c in ids if c not in ended]
    reasons = Counter(ended[c]["reason"] for c in ids if c in ended)
    skipped = sum(ended[c]["summary"]["windows_skipped"] for c in ids if c in ended)
    scored = sum(ended[c]["summary"]["windows_scored"] for c in ids if c in ended)
    line = (f"overload with tail audio: {calls} callers x {seconds:g} s sent at once then hung up, done in "
            f"{took:.1f} s; audio lost: {lost_s:.2f} s (target 0); end reasons {dict(reasons)}; windows scored "
            f"{scored}, skipped {skipped} (silence/overload)")
    problems = [f"{lost_s:.2f} s of audio lost"] if lost_s > 0 else []
    problems += [f"{len(missing)} overload calls without call.ended"] if missing else []
    problems += [f"end reasons {dict(reasons)}"] if set(reasons) != {"eof"} else []
    return [line], problems


async def live_calls(daemon: FaultDaemon, hung_up: int, live: int, seconds: float) -> list[asyncio.Task]:
    """``hung_up`` callers that sent everything and left, ``live`` ones streaming in real time."""
    for c in [str(uuid.uuid4()) for _ in range(hung_up)]:
        await asyncio.to_thread(send_at_once, daemon.as_port, c, seconds)
    return [asyncio.create_task(healthy(HOST, daemon.as_port, voiced_audio(60, seed=i))) for i in range(live)]


async def stop_under_load(daemon: FaultDaemon, sig: int, hung_up: int, live: int) -> tuple[float, int]:
    stderr_before = (daemon.workdir / "daemon.stderr").stat().st_size
    tasks = await live_calls(daemon, hung_up, live, seconds=10)
    await asyncio.sleep(3.0)
    t0 = time.monotonic()
    await asyncio.to_thread(daemon.stop, sig)
    took = time.monotonic() - t0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return took, stderr_before


def stderr_since(daemon: FaultDaemon, offset: int) -> str:
    with open(daemon.workdir / "daemon.stderr", "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


async def sigterm_round(daemon: FaultDaemon, calls: int) -> tuple[list[str], list[str]]:
    before = {e["call_id"] for e in daemon.events()}
    took, offset = await stop_under_load(daemon, signal.SIGTERM, calls // 2, calls - calls // 2)
    events = daemon.events()
    summary, problems = log_consistency(events)
    out = stderr_since(daemon, offset)
    tracebacks = out.count("Traceback") + out.count(" ERROR ")
    reasons = Counter(e["reason"] for e in events if e["type"] == "call.ended" and e["call_id"] not in before)
    problems += [f"{tracebacks} tracebacks/ERROR lines on SIGTERM"] if tracebacks else []
    return [f"SIGTERM under load ({calls // 2} sent at once and hung up, {calls - calls // 2} live): exit in "
            f"{took:.1f} s, end reasons {dict(reasons)}, tracebacks/ERROR lines {tracebacks}; log: {summary}"], problems


async def kill_round(daemon: FaultDaemon, calls: int) -> tuple[list[str], list[str]]:
    await stop_under_load(daemon, signal.SIGKILL, 0, calls)
    t0 = time.monotonic()
    daemon.start()
    ready = time.monotonic() - t0
    events = daemon.events()
    summary, problems = log_consistency(events)
    lost = sum(e["type"] == "call.ended" and e["reason"] == "lost" for e in events)
    return [f"kill -9 under load ({calls} live), restart to READY=1 {ready:.1f} s: {lost} legs ended as lost; "
            f"log: {summary}"], problems


async def disk_full_round(daemon: FaultDaemon, tmpfs: Path, calls: int) -> tuple[list[str], list[str]]:
    filler = tmpfs / "filler"
    async with aiohttp.ClientSession() as session:
        while (await daemon.health(session))["status"] != "ok":  # the overload round's period has passed
            await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(healthy(HOST, daemon.as_port, voiced_audio(14, seed=i))) for i in range(calls)]
        await asyncio.sleep(3.0)
        await asyncio.to_thread(fill, filler)
        full_at = time.monotonic()  # from the moment the disk is full (filling 16 MiB takes a while)
        while "eventlog" not in (report := await daemon.health(session))["reasons"]:
            await asyncio.sleep(0.02)
        degraded_after = time.monotonic() - full_at
        await asyncio.sleep(3.0)
        waiting = (await daemon.health(session))["reasons"].get("eventlog", "")
        freed_at = time.monotonic()
        filler.unlink()
        while (await daemon.health(session))["status"] != "ok":
            await asyncio.sleep(0.02)
        ok_after = time.monotonic() - freed_at
    await asyncio.gather(*tasks)
    await daemon.idle()
    events = [e for e in daemon.events() if e["boot"] == daemon.events()[-1]["boot"]]
    seqs = [e["seq"] for e in events]
    gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    line = (f"disk full ({calls} live calls, event log tmpfs filled): /health degraded after {degraded_after:.2f} s "
            f"({report['reasons']['eventlog']!r}), after 3 s: {waiting!r}; ok {ok_after:.2f} s after "
            f"space was freed; events lost: {gaps} (seq gaps in this boot)")
    problems = [f"health degraded only after {degraded_after:.2f} s"] if degraded_after > 1.0 else []
    problems += [f"{gaps} events lost"] if gaps else []
    return [line], problems


def fill(path: Path) -> None:
    """Write zeros until the filesystem is full."""
    with contextlib.suppress(OSError), open(path, "wb") as f:
        while True:
            f.write(bytes(65536))
            f.flush()


async def scenarios(daemon: FaultDaemon, tmpfs: Path, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    for run in (hostile_round(daemon, args.hostile), overload_round(daemon, args.overload_calls, args.seconds),
                disk_full_round(daemon, tmpfs, args.calls), sigterm_round(daemon, args.calls)):
        found_lines, found = await run
        lines += found_lines
        problems += found
    daemon.start()
    found_lines, found = await kill_round(daemon, args.calls)
    return lines + found_lines, problems + found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostile", type=int, default=20, help="connections of each hostile kind")
    parser.add_argument("--overload-calls", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per overload caller")
    parser.add_argument("--calls", type=int, default=20, help="live calls in the SIGTERM, kill -9 and disk-full runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="evfaults") as tmp:
        workdir, tmpfs = Path(tmp), Path(tmp) / "log"
        tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(tmpfs)], check=True)
        notify = FakeSystemd(workdir / "notify")
        daemon = FaultDaemon(workdir, notify, tmpfs)
        try:
            daemon.start()
            lines, problems = asyncio.run(scenarios(daemon, tmpfs, args))
        finally:
            daemon.stop()
            notify.close()
            subprocess.run(["umount", str(tmpfs)], check=False)
        return report(lines, problems, workdir / "daemon.stderr")


if __name__ == "__main__":
    sys.exit(main())
