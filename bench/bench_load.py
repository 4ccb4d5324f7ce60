"""Load and fault benchmark: N concurrent AudioSocket calls against a daemon subprocess, with faults.

    .venv/bin/python -m bench.bench_load --calls 20

Runs the daemon under a fake systemd notify socket (so readiness is READY=1, as under systemd),
plays ``--calls`` healthy real-time calls together with abrupt disconnects, slow-loris peers,
peers that never read, oversize and malformed frames, for ``--rounds`` rounds; then restarts
the daemon (SIGTERM) and crash-restarts it (kill -9 mid-call). Prints calls held and dropped,
events expected vs received (JSONL log and /events WebSocket) for the surviving calls, peak
RSS, RSS after each round, and restart-to-ready times. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from bench.loadgen import (
    MALFORMED,
    FakeSystemd,
    PeerResult,
    abrupt,
    healthy,
    malformed,
    never_reads,
    rss_bytes,
    slow_loris,
    unit_environment,
    voiced_audio,
    windows_due,
)

TOKEN = "bench-token"
COUNTED = ("call.started", "score", "call.ended")


class Daemon:
    """A daemon subprocess started under the fake notify socket."""

    def __init__(self, workdir: Path, notify: FakeSystemd, idle_timeout_s: float) -> None:
        self.workdir, self.notify = workdir, notify
        self.as_port, self.api_port = _free_port(), _free_port()
        self.log_path = workdir / "events.jsonl"
        config = {"audiosocket": {"port": self.as_port, "idle_timeout_s": idle_timeout_s},
                  "api": {"port": self.api_port, "token": TOKEN},
                  "engine": {"max_lag_s": 30.0},
                  "events": {"log_path": str(self.log_path)},
                  "history": {"path": str(workdir / "history.sqlite3")}}
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Spawn; seconds until READY=1."""
        self.notify.receive(0)  # what the previous run sent is not this run's
        self.notify.messages.clear()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emovoice_daemon.tools.cli", "run", "-c", str(self.config_path)], cwd=self.workdir,
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "daemon.stderr", "ab"),
            env={**os.environ, **unit_environment(), **self.notify.env(watchdog_s=5.0)})
        arrived, _ = self.notify.wait_for(lambda m: m.get("READY") == "1", timeout=300)  # a busy box is slow
        return arrived - started

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    @property
    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def watch_events(daemon: Daemon, sink: list[dict], ready: asyncio.Event) -> None:
    url = f"http://127.0.0.1:{daemon.api_port}/events"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            ready.set()
            async for msg in ws:
                sink.append(json.loads(msg.data))


async def sample_rss(daemon: Daemon, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], daemon.rss)
        await asyncio.sleep(0.2)


async def one_round(daemon: Daemon, calls: int, seconds: float, idle_timeout_s: float,
                    rng: random.Random) -> list[PeerResult]:
    """``calls`` healthy calls plus the faults, all at once; returns every peer's result."""
    host, port = "127.0.0.1", daemon.as_port
    limit = idle_timeout_s + 5
    peers = [healthy(host, port, voiced_audio(seconds, seed=i)) for i in range(calls)]
    peers += [abrupt(host, port, voiced_audio(seconds, seed=100 + i), after_s=rng.uniform(0.2, seconds - 1))
              for i in range(calls // 5)]
    peers += [slow_loris(host, port, limit) for _ in range(2)]
    peers += [never_reads(host, port, voiced_audio(2, seed=7), limit) for _ in range(2)]
    peers += [malformed(host, port, variant) for variant in MALFORMED for _ in range(2)]
    return list(await asyncio.gather(*peers))


async def wait_idle(daemon: Daemon, timeout: float = 60) -> None:
    """Until /health reports no live legs."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"http://127.0.0.1:{daemon.api_port}/health") as resp:
                if (await resp.json())["legs"] == 0:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError("legs still live after the round")


def check_round(results: list[PeerResult], log_events: list[dict], ws_events: list[dict],
                idle_timeout_s: float) -> tuple[dict[str, int], list[str]]:
    """Figures of one round and the problems found."""
    problems = []
    healthy_calls = [r for r in results if r.kind == "healthy" and not r.error]
    expected = sum(2 + windows_due(r.samples) for r in healthy_calls)
    ids = {r.call_id for r in healthy_calls}
    in_log = Counter(e["type"] for e in log_events if e["call_id"] in ids and e["type"] in COUNTED)
    in_ws = Counter(e["type"] for e in ws_events if e["call_id"] in ids and e["type"] in COUNTED)
    ended = {e["call_id"]: e for e in log_events if e["type"] == "call.ended"}
    for r in results:
        if r.kind == "healthy" and (r.error or ended.get(r.call_id, {}).get("reason") != "eof"):
            problems.append(f"healthy call {r.call_id}: {r.error or ended.get(r.call_id, {}).get('reason')}")
        elif r.kind == "abrupt" and r.call_id not in ended:
            problems.append(f"abrupt call {r.call_id} never got call.ended")
        elif r.kind in ("slow_loris", "never_reads") and (r.closed_after_s is None
                                                          or r.closed_after_s > idle_timeout_s + 2):
            problems.append(f"{r.kind} peer held for {r.closed_after_s} s (idle_timeout_s={idle_timeout_s})")
        elif r.kind in MALFORMED and (r.closed_after_s is None or r.closed_after_s > 1.0):
            problems.append(f"{r.kind} peer not closed at once ({r.closed_after_s})")
    if sum(in_log.values()) != expected or sum(in_ws.values()) != expected:
        problems.append(f"events: expected {expected}, log {sum(in_log.values())}, websocket {sum(in_ws.values())}")
    figures = {"held": len(healthy_calls), "dropped_on_purpose": len(results) - len(healthy_calls),
               "expected": expected, "log": sum(in_log.values()), "ws": sum(in_ws.values())}
    return figures, problems


async def load_rounds(daemon: Daemon, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    rng = random.Random(args.seed)
    warm = await asyncio.gather(*(healthy("127.0.0.1", daemon.as_port, voiced_audio(args.seconds, seed=i), speed=2.0)
                                  for i in range(args.calls)))
    assert not any(r.error for r in warm), warm
    await wait_idle(daemon)
    await asyncio.sleep(1.0)
    baseline = daemon.rss
    lines.append(f"RSS baseline (idle, after a warm-up round of {args.calls} calls): {baseline / 2**20:.1f} MiB")
    after_rounds: list[int] = []
    for n in range(1, args.rounds + 1):
        ws_events: list[dict] = []
        subscribed = asyncio.Event()
        watcher = asyncio.create_task(watch_events(daemon, ws_events, subscribed))
        await subscribed.wait()
        peak = [daemon.rss]
        sampler = asyncio.create_task(sample_rss(daemon, peak))
        started = time.monotonic()
        results = await one_round(daemon, args.calls, args.seconds, args.idle_timeout, rng)
        await wait_idle(daemon)
        took = time.monotonic() - started
        await asyncio.sleep(1.0)  # the last events reach the WebSocket
        sampler.cancel()
        watcher.cancel()
        after = daemon.rss
        after_rounds.append(after)
        figures, found = check_round(results, daemon.events(), ws_events, args.idle_timeout)
        problems += [f"round {n}: {p}" for p in found]
        kinds = Counter(r.kind for r in results if r.kind != "healthy")
        lines += [f"round {n} ({took:.1f} s): calls held {figures['held']}, dropped on purpose "
                  f"{figures['dropped_on_purpose']} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
                  f"  events for surviving calls (call.started + score + call.ended): expected {figures['expected']}, "
                  f"received {figures['log']} in the JSONL log, {figures['ws']} on the /events WebSocket",
                  f"  peak RSS {peak[0] / 2**20:.1f} MiB, RSS after {after / 2**20:.1f} MiB "
                  f"({(after - baseline) / 2**20:+.1f} MiB vs baseline)"]
    calls = args.calls * len(after_rounds)
    grown = after_rounds[-1] - baseline
    lines.append(f"RSS after the last round vs baseline: {grown / 2**20:+.1f} MiB over {calls} calls "
                 f"({grown / calls / 2**10:+.0f} KiB per call)")
    return lines, problems


async def crash_mid_call(daemon: Daemon) -> None:
    """Start a call, then kill -9 the daemon while it is live."""
    task = asyncio.create_task(healthy("127.0.0.1", daemon.as_port, voiced_audio(6, seed=3)))
    await asyncio.sleep(2.0)
    daemon.stop(signal.SIGKILL)
    with contextlib.suppress(Exception):
        await task


def restart_figures(daemon: Daemon) -> tuple[list[str], list[str]]:
    lines, problems = [], []
    t0 = time.monotonic()
    daemon.stop()
    stopped = time.monotonic() - t0
    ready = daemon.start()
    lines.append(f"restart (SIGTERM, drain, exit, start): {stopped + ready:.2f} s to READY=1 "
                 f"(stop {stopped:.2f} s, start-to-ready {ready:.2f} s)")
    asyncio.run(crash_mid_call(daemon))
    t0 = time.monotonic()
    ready = daemon.start()
    lines.append(f"restart after kill -9 mid-call: {time.monotonic() - t0:.2f} s to READY=1")
    try:
        events = daemon.events()
    except json.JSONDecodeError as exc:
        problems.append(f"event log has a torn line after kill -9 and restart: {exc}")
    else:
        lines.append(f"event log after kill -9 + restart: {len(events)} events, every line whole JSON")
    return lines, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent healthy calls")
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per healthy call (played in real time)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="seed of the abrupt disconnect times")
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="audiosocket.idle_timeout_s of the daemon")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="evbench") as tmp:
        workdir = Path(tmp)
        notify = FakeSystemd(workdir / "notify")
        daemon = Daemon(workdir, notify, args.idle_timeout)
        try:
            lines = [f"start-to-ready under the fake notify socket: {daemon.start():.2f} s"]
            round_lines, problems = asyncio.run(load_rounds(daemon, args))
            restart_lines, restart_problems = restart_figures(daemon)
            lines += round_lines + restart_lines
            problems += restart_problems
            if daemon.proc.poll() is not None:
                problems.append(f"daemon exited with {daemon.proc.returncode}")
        finally:
            daemon.stop()
            notify.close()
        return report(lines, problems, workdir / "daemon.stderr")


def report(lines: list[str], problems: list[str], stderr: Path) -> int:
    """Print the figures and the problems (with the daemon's last log lines); the exit status."""
    print("\n".join(lines))
    print("\n".join(f"PROBLEM: {p}" for p in problems) or "all checks passed")
    if problems:
        print(stderr.read_text()[-3000:], file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
