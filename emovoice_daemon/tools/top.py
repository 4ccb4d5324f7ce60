"""``emovoice-top``: a supervisor's live terminal view of every call (htop-like, built with rich).

One row per call (both legs of a separated call on the same row): call id, agent, caller,
duration, current class and probability per leg, a sparkline of NEGATIVE over the last
minute, escalation state (alerts highlighted). The header shows daemon health (legs,
scoring lag, device, CPU load). Keys: ``n`` NEGATIVE, ``d`` duration, ``s`` state,
``c`` call id (sort), ``j``/``k`` or arrows select a call, ``l`` listen in / ``w`` whisper to the
agent on the selected call (rings the phone of ``--supervisor``, see ``POST /calls/{id}/listen``),
``q`` quit. Reconnects with back-off when the daemon restarts.
With ``--nats`` it follows a JetStream stream instead: the calls of every daemon of ``--site``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import termios
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from emovoice_daemon.config import JetStreamConfig, read_secret
from emovoice_daemon.outputs.jetstream import connect, follow, site_filter

SPARK = "▁▂▃▄▅▆▇█"
SPARK_S = 60.0
SPARK_WIDTH = 30
ENDED_VISIBLE_S = 5.0
LAG_WINDOW = 50
SEVERITY_RANK = {"": 0, "watch": 1, "alert": 2}
SORTS = {"n": "NEGATIVE", "d": "duration", "s": "state", "c": "call id"}
LISTEN_KEYS = {"l": "listen", "w": "whisper"}
VERDICT_KEYS = {"y": "confirmed", "x": "dismissed", "u": "upset", "m": "calm"}  # the selected call's escalation / call
MOVES = {"j": 1, "\x1b[B": 1, "k": -1, "\x1b[A": -1}


@dataclass
class LegView:
    """The latest state of one leg."""

    role: str
    label: str = "-"
    prob: float = 0.0
    smoothed: float = 0.0
    severity: str = ""
    negatives: deque[tuple[float, float]] = field(default_factory=deque)  # (leg seconds, NEGATIVE)


@dataclass
class CallView:
    """One row: a call and its legs."""

    call_id: str
    started: float
    meta: dict[str, Any] = field(default_factory=dict)
    legs: dict[str, LegView] = field(default_factory=dict)
    ended: float | None = None
    escalation_id: str = ""  # the call's latest escalation (a verdict with y / x concerns it)

    def leg(self, role: str) -> LegView:
        return self.legs.setdefault(role, LegView(role))

    @property
    def label(self) -> str:
        """The call's name from its meta (as the demo's console shows it), else the start of its id."""
        return str(self.meta.get("name") or self.call_id[:8])

    @property
    def severity(self) -> str:
        return max((leg.severity for leg in self.legs.values()), key=SEVERITY_RANK.__getitem__, default="")

    @property
    def negative(self) -> float:
        return max((leg.smoothed for leg in self.legs.values()), default=0.0)


class TopState:
    """Live calls and daemon health, updated from events and /health."""

    def __init__(self) -> None:
        self.calls: dict[str, CallView] = {}
        self.health: dict[str, Any] = {}
        self.lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self.connected = False
        self.status = "connecting..."
        self.sort = "s"
        self.selected: str | None = None
        self.message = ""

    def seed(self, calls: list[dict[str, Any]]) -> None:
        """Live calls from ``GET /calls?live=1`` (their meta and start time), after a (re)connect."""
        self.calls = {}
        for call in calls:
            view = CallView(call["call_id"], call["started"], dict(call.get("meta", {})))
            for leg in call.get("legs", []):
                view.leg(leg["role"])
            self.calls[view.call_id] = view

    def apply(self, event: dict[str, Any]) -> None:
        call = self.calls.get(event["call_id"])
        if call is None:
            call = self.calls[event["call_id"]] = CallView(event["call_id"], event["ts"])
        if event["type"] == "call.agent":  # a queue member answered (AMI): the call's, not a leg's
            call.meta["agent"] = event.get("agent", "")
            return
        kind, leg = event["type"], call.leg(event["role"])
        if "site" in event:  # followed from JetStream: which call server
            call.meta["site"] = event["site"]
        if kind == "call.started":
            bound = call.meta.get("agent")  # by call.agent, which may come first
            call.meta.update(event.get("meta", {}))
            if bound:
                call.meta["agent"] = bound
            call.started = min(call.started, event["ts"])
            call.ended = None
        elif kind == "score":
            leg.label, leg.prob = event["label"], event["probs"][event["label"]]
            leg.smoothed = event["negative_smoothed"]
            leg.negatives.append((event["window"]["end"], event["probs"]["NEGATIVE"]))
            while leg.negatives[0][0] < event["window"]["end"] - SPARK_S:
                leg.negatives.popleft()
            self.lags.append(event["lag_ms"])
        elif kind == "call.hold":
            leg.label, leg.prob = ("on hold", 0.0) if event["on_hold"] else ("-", 0.0)
        elif kind == "escalation.raised":
            leg.severity = event["severity"]
            call.escalation_id = event.get("escalation_id", call.escalation_id)
        elif kind == "escalation.cleared":
            leg.severity = ""
        elif kind == "call.ended":
            leg.severity = ""
            leg.label = "ended"
            if all(v.label == "ended" for v in call.legs.values()):
                call.ended = event["ts"]

    def expire(self, now: float) -> None:
        """Drop calls that ended more than ENDED_VISIBLE_S ago."""
        for call_id in [c.call_id for c in self.calls.values() if c.ended and now - c.ended > ENDED_VISIBLE_S]:
            del self.calls[call_id]

    def move(self, step: int) -> None:
        """Select the next (step 1) or previous (-1) row; the first row when none is selected."""
        ids = [c.call_id for c in self.rows()]
        if not ids:
            return
        at = ids.index(self.selected) + step if self.selected in ids else 0
        self.selected = ids[max(0, min(len(ids) - 1, at))]

    def verdict_path(self, verdict: str) -> str:
        """The API path a verdict on the selected call goes to; ValueError says why there is none."""
        call = self.calls.get(self.selected or "")
        if call is None:
            raise ValueError("select a call first (j/k)")
        if verdict in ("upset", "calm"):
            return f"/calls/{call.call_id}/feedback"
        if not call.escalation_id:
            raise ValueError(f"call {call.label} had no escalation: u (upset) or m (calm) marks the call")
        return f"/escalations/{call.escalation_id}/feedback"

    def rows(self) -> list[CallView]:
        keys = {"n": lambda c: -c.negative, "d": lambda c: c.started, "c": lambda c: c.call_id,
                "s": lambda c: (-SEVERITY_RANK[c.severity], -c.negative)}
        return sorted(self.calls.values(), key=keys[self.sort])


def sparkline(points: deque[tuple[float, float]] | list[tuple[float, float]], width: int = SPARK_WIDTH) -> str:
    """NEGATIVE over the last minute, one block per SPARK_S / width seconds (max per bucket)."""
    if not points:
        return ""
    end = points[-1][0]
    buckets: list[float | None] = [None] * width
    for t, v in points:
        i = min(width - 1, int((t - (end - SPARK_S)) / SPARK_S * width))
        if i >= 0:
            buckets[i] = max(v, buckets[i] or 0.0)
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, int(v * len(SPARK)))] for v in buckets)


ROLE_TAGS = {"customer": "cust", "agent": "agent", "mixed": ""}


def _duration(seconds: float) -> str:
    m, s = divmod(int(max(seconds, 0)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _tagged(role: str, text: str) -> str:
    """A leg's cell line, prefixed with its role when the call is separated (a mixed leg needs no tag)."""
    tag = ROLE_TAGS.get(role, role[:5])
    return f"{tag:<5} {text}" if tag else text


def render(state: TopState, now: float) -> Group:
    """The whole screen: header, table of calls, key help."""
    h = state.health
    lag = sorted(state.lags)[len(state.lags) // 2] if state.lags else 0.0
    live_mark = Text("● connected", style="green") if state.connected else Text(f"● {state.status}", style="red")
    live = [c for c in state.calls.values() if not c.ended]
    ended = len(state.calls) - len(live)
    header = Text.assemble(
        ("emovoice-top  ", "bold"), live_mark,
        f"   calls {len(live)}{f' (+{ended} ended)' if ended else ''}"
        f"   legs {sum(1 for c in live for leg in c.legs.values() if leg.label != 'ended')}"
        f"   lag p50 {lag:.0f} ms   device {h.get('device', '-')}"
        f"   load {h.get('cpu_load', '-')}/{h.get('cpus', '-')} CPU   model {h.get('model', {}).get('name', '-')}")
    table = Table(expand=True, header_style="bold", pad_edge=False)
    for name, width in (("call", 9), ("agent", 5), ("caller", 6), ("time", 5), ("class", 17),
                        ("NEGATIVE (last 60 s)", SPARK_WIDTH + 5), ("state", 5)):
        table.add_column(name, no_wrap=True, min_width=width)
    for call in state.rows():
        legs = sorted(call.legs.values(), key=lambda leg: leg.role)
        end = call.ended or now
        style = {"alert": "bold white on red", "watch": "black on yellow"}.get(call.severity, "")
        marker = "▶" if call.call_id == state.selected else " "
        table.add_row(
            "\n".join((marker + call.label, *([" " + call.meta["site"]] if "site" in call.meta else []))),
            str(call.meta.get("agent", "")), str(call.meta.get("caller", "")),
            _duration(end - call.started),
            "\n".join(_tagged(leg.role, leg.label if leg.label == "on hold" else f"{leg.label} {leg.prob:.2f}") for leg in legs),
            "\n".join(_tagged(leg.role, sparkline(leg.negatives)) for leg in legs),
            "ended" if call.ended else (call.severity.upper() or "ok"),
            style="dim" if call.ended else style)
    keys = "  ".join(f"[{k}] {v}{' ◀' if k == state.sort else ''}" for k, v in SORTS.items())
    help_ = f"sort: {keys}   [j/k] select  [l] listen  [w] whisper  [y/x] confirm/dismiss alert  [u/m] upset/calm   [q] quit"
    return Group(header, table, Text(help_, style="dim"), Text(state.message))


class TopClient:
    """Keeps the state in sync with one daemon: events WebSocket, /health polling, reconnects."""

    def __init__(self, url: str, token: str, state: TopState) -> None:
        self.url, self.state = url.rstrip("/"), state
        self.headers = {"Authorization": f"Bearer {token}"}

    async def run(self) -> None:
        backoff = 0.5
        async with aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(sock_read=None)) as s:
            while True:
                try:
                    await self._session(s)
                    backoff = 0.5
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
                    self.state.status = f"daemon unreachable ({type(exc).__name__}); retrying in {backoff:.1f}s"
                self.state.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _session(self, s: aiohttp.ClientSession) -> None:
        async with s.ws_connect(f"{self.url}/events", heartbeat=10) as ws:
            self.state.health = await self._get(s, "/health") or {}
            self.state.seed((await self._get(s, "/calls?live=1") or {}).get("calls", []))
            self.state.connected = True
            poller = asyncio.create_task(self._poll_health(s))
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.state.apply(json.loads(msg.data))
            finally:
                poller.cancel()
        self.state.status = "daemon closed the connection; reconnecting"

    async def _get(self, s: aiohttp.ClientSession, path: str) -> dict[str, Any] | None:
        async with s.get(self.url + path) as resp:
            if resp.status == 401:
                raise ValueError("the daemon rejected the token (401)")
            return await resp.json() if resp.status == 200 else None

    async def listen(self, call_id: str, supervisor: str, mode: str) -> None:
        """Ask the daemon to ring ``supervisor``'s phone into the call; the outcome goes to the message line."""
        self.state.message = f"{mode}: ringing {supervisor}'s phone for call {call_id[:8]}..."
        try:
            async with aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=15)) as s:
                async with s.post(f"{self.url}/calls/{call_id}/listen",
                                  json={"supervisor": supervisor, "mode": mode}) as resp:
                    body = await resp.json(content_type=None) or {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            self.state.message = f"{mode} failed: {type(exc).__name__}"
            return
        if resp.status == 200:
            self.state.message = f"{mode}: {supervisor}'s phone rings, connected to {body['channel']}"
        else:
            self.state.message = f"{mode} failed ({resp.status}): {body.get('error', '')}"

    async def verdict(self, path: str, verdict: str) -> None:
        """POST a verdict (the API token: a supervisor's); the outcome goes to the message line."""
        try:
            async with aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=15)) as s:
                async with s.post(self.url + path, json={"verdict": verdict}) as resp:
                    body = await resp.json(content_type=None) or {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            self.state.message = f"{verdict} not noted: {type(exc).__name__}"
            return
        self.state.message = (f"{verdict}: noted for call {body['call_id'][:8]}" if resp.status == 200
                              else f"{verdict} not noted ({resp.status}): {body.get('error', '')}")

    async def _poll_health(self, s: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(2.0)
            self.state.health = await self._get(s, "/health") or self.state.health


class NatsTopClient:
    """Keeps the state in sync with a JetStream stream: every daemon of ``site`` (``*``: all sites)."""

    def __init__(self, cfg: JetStreamConfig, site: str, since_s: float, state: TopState) -> None:
        self.cfg, self.site, self.since_s, self.state = cfg, site, since_s, state

    def _on_state(self, connected: bool, why: str) -> None:
        self.state.connected, self.state.status = connected, f"nats {why}"

    async def run(self) -> None:
        self.state.status = f"connecting to {', '.join(self.cfg.servers)}"
        nc = await connect(self.cfg, "emovoice-top", self._on_state)
        counter = asyncio.create_task(self._count_legs())
        try:
            async for event in follow(nc.jetstream(), self.cfg.stream, site_filter(self.site), self.since_s):
                self.state.apply(event)
        finally:
            counter.cancel()
            await nc.close()

    async def listen(self, call_id: str, supervisor: str, mode: str) -> None:
        self.state.message = f"{mode} goes through the call's daemon: run emovoice-top --url against it"

    async def verdict(self, path: str, verdict: str) -> None:
        self.state.message = "verdicts go through the call's daemon: run emovoice-top --url against it"

    async def _count_legs(self) -> None:
        while True:
            legs = [leg for call in self.state.calls.values() for leg in call.legs.values() if leg.label != "ended"]
            self.state.health = {"legs": len(legs)}
            await asyncio.sleep(1.0)


@contextlib.contextmanager
def cbreak() -> Iterator[bool]:
    """Single-key input when stdin is a terminal; yields whether keys can be read."""
    if not sys.stdin.isatty():
        yield False
        return
    saved = termios.tcgetattr(sys.stdin)
    tty.setcbreak(sys.stdin)
    try:
        yield True
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


async def top(make_client: Callable[[TopState], TopClient | NatsTopClient], refresh_s: float,
              supervisor: str = "") -> None:
    state = TopState()
    quit_ = asyncio.Event()
    loop = asyncio.get_running_loop()
    client = make_client(state)
    jobs: set[asyncio.Task[None]] = set()

    def on_key() -> None:
        for key in re.findall(r"\x1b\[[A-D]|[^\x1b]", os.read(sys.stdin.fileno(), 32).decode(errors="ignore")):
            key = key if key in MOVES else key.lower()
            if key in MOVES:
                state.move(MOVES[key])
            elif key == "q":
                quit_.set()
            elif key in SORTS:
                state.sort = key
            elif key in LISTEN_KEYS:
                listen(LISTEN_KEYS[key])
            elif key in VERDICT_KEYS:
                verdict(VERDICT_KEYS[key])

    def verdict(kind: str) -> None:
        try:
            path = state.verdict_path(kind)
        except ValueError as exc:
            state.message = str(exc)
            return
        job = asyncio.create_task(client.verdict(path, kind))
        jobs.add(job)
        job.add_done_callback(jobs.discard)

    def listen(mode: str) -> None:
        if not supervisor:
            state.message = "listen-in needs emovoice-top --supervisor NAME (a name in the daemon's ami.supervisors)"
        elif state.selected is None:
            state.message = "select a call first (j/k)"
        else:
            job = asyncio.create_task(client.listen(state.selected, supervisor, mode))
            jobs.add(job)
            job.add_done_callback(jobs.discard)

    runner = asyncio.create_task(client.run())
    with cbreak() as keys, Live(render(state, time.time()), console=Console(), screen=True,
                                auto_refresh=False) as live:
        if keys:
            loop.add_reader(sys.stdin.fileno(), on_key)
        while not quit_.is_set():
            state.expire(time.time())
            live.update(render(state, time.time()), refresh=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(quit_.wait(), refresh_s)
        if keys:
            loop.remove_reader(sys.stdin.fileno())
    runner.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emovoice-top", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="daemon API base URL")
    parser.add_argument("--token", default="", help="API token (or --token-file / $EMOVOICE_API_TOKEN)")
    parser.add_argument("--token-file", default="", help="file holding the API token (production: /etc/emovoice/api-token)")
    parser.add_argument("--refresh", type=float, default=0.5, help="screen refresh interval, seconds")
    parser.add_argument("--supervisor", default="", help="your name in the daemon's ami.supervisors: l/w ring your phone")
    parser.add_argument("--nats", default="",
                        help="follow JetStream instead of one daemon: NATS URL(s), comma-separated")
    parser.add_argument("--site", default="*", help="with --nats: the site to show (default *: every site)")
    parser.add_argument("--stream", default=JetStreamConfig.stream, help="with --nats: the stream name")
    parser.add_argument("--creds", default="", help="with --nats: NATS .creds file")
    parser.add_argument("--since", type=float, default=120.0,
                        help="with --nats: replay this many seconds of events at start (0: only new ones)")
    args = parser.parse_args(argv)
    if args.nats:
        if args.site != "*" and not re.fullmatch(r"[A-Za-z0-9_-]+", args.site):
            parser.error(f"--site must be * or a site name (letters, digits, _ and -), got {args.site!r}")
        cfg = JetStreamConfig(servers=args.nats.split(","), stream=args.stream, credentials_file=args.creds)
        make_client = lambda state: NatsTopClient(cfg, args.site, args.since, state)  # noqa: E731
        logging.getLogger("emovoice_daemon").addHandler(logging.NullHandler())  # the header shows the link state
    else:
        token = args.token or read_secret("", args.token_file, "EMOVOICE_API_TOKEN")
        if not token:
            parser.error("an API token is needed: --token, --token-file or $EMOVOICE_API_TOKEN")
        make_client = lambda state: TopClient(args.url, token, state)  # noqa: E731
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(top(make_client, args.refresh, args.supervisor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
