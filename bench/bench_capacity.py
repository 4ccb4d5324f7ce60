"""End-to-end capacity: real-time AudioSocket calls into the daemon, until windows are skipped or lag grows.

    nice -n 10 .venv/bin/python -m bench.bench_capacity --workers 1,2 --levels 100,150,200,250

For each ``--workers`` value the daemon runs as a subprocess (``emovoice-daemon run`` with a
config file: that many worker processes, ``model.threads``, the shipped model or ``--model``).
For each level, ``N`` calls of human speech (CREMA-D actors, concatenated, when ``--speech`` is
there, else the bundled sample calls) are played in real time by generator processes
(``bench/callgen.py``: byte-faithful frames every 20 ms, starts spread over one hop). Printed per
level: windows answered (scored, or found without speech by the speech gate; of those the VAD passes), lag p50/p95/max as the engine measures it
(``lag_ms``) and end to end (from the generator handing the window's last byte to the kernel to the
score arriving on ``/events``), overload skips, the daemon's CPU (all its processes) and peak RSS,
the generators' CPU and pacing error (a frame's last byte taken by the kernel minus when it was due), and
the load average. A level passes with >= 99 % of windows scored, an end-to-end p95 under 500 ms and the
generators on time (pacing p99 under one 20 ms frame: a generator that fell behind real time did not offer the
load the level names). Levels stop at the second level that fails; the capacity printed at the end is the
highest level below the first failure (a pass above a failure is noise, not capacity).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import yaml

from bench.callgen import Plan, Result
from bench.loadgen import FakeSystemd, unit_environment
from emovoice_daemon.config import PipelineConfig
from emovoice_daemon.ingest.audiosocket import Kind, encode_frame
from emovoice_daemon.scoring.vad import voiced_ratio
from emovoice_daemon.tools.simulate import audiosocket_frames, load_call_audio

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / ".." / "shared" / "data" / "cremad" / "AudioWAV"
SAMPLES = REPO / "emovoice_daemon" / "tools" / "samples"  # CREMA-D clips of two actors
RATE = 8000
TOKEN = "bench-token"
PASS_SCORED, PASS_P95_MS, PASS_PACING_P99_MS = 0.99, 500.0, 20.0


def speech_calls(seconds: int, count: int, speech: Path, emotions: tuple[str, ...] = ()
                 ) -> tuple[list[np.ndarray], Path]:
    """Up to ``count`` distinct calls of ``seconds``: one CREMA-D actor's clips back to back (looped if short),
    from ``speech``, else from the bundled sample clips (two actors); with ``emotions`` (CREMA-D codes, e.g. NEU) only
    clips of those."""
    directory = speech if speech.is_dir() and any(speech.glob("*.flac")) else SAMPLES
    actors: dict[str, list[Path]] = {}
    for clip in sorted(directory.glob("*.flac")):
        if not emotions or clip.name.split("_")[2] in emotions:
            actors.setdefault(clip.name.split("_")[0], []).append(clip)
    calls = []
    for clips in list(actors.values())[:count]:
        pcm: list[np.ndarray] = []
        for clip in clips:
            pcm.append(load_call_audio(clip))
            if sum(map(len, pcm)) >= seconds * RATE:
                break
        calls.append(np.resize(np.concatenate(pcm), seconds * RATE))
    return calls, directory.resolve()


def voiced_windows(pcm: np.ndarray, pipeline: PipelineConfig) -> list[int]:
    """End sample of every window the daemon scores (the VAD passes it) for this audio."""
    window, hop = int(pipeline.window_s * RATE), int(pipeline.hop_s * RATE)
    return [end for end in range(window, len(pcm) + 1, hop)
            if voiced_ratio(pcm[end - window:end], RATE, pipeline.vad_energy_dbfs) >= pipeline.vad_min_voiced]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children, live ones and reaped ones."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK") + sum(_cpu_s(c) for c in _children(pid))


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return rss + sum(_rss(c) for c in _children(pid))


class Daemon:
    """``emovoice-daemon run -c config.yaml`` under a fake systemd notify socket."""

    def __init__(self, workdir: Path, workers: int | str, model: str, threads: int, gate: bool = True,
                 int8: bool | str = "model") -> None:
        self.as_port, self.api_port = _free_port(), _free_port()
        config = {"audiosocket": {"port": self.as_port}, "api": {"port": self.api_port, "token": TOKEN},
                  "model": {"path": model, "threads": threads, "quantize_int8": int8}, "service": {"workers": workers},
                  "pipeline": {"speech_gate": gate},
                  "events": {"log_path": str(workdir / f"events-{workers}.jsonl")},
                  "history": {"path": str(workdir / f"history-{workers}.sqlite3")}}
        self.config_path = workdir / f"config-{workers}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.notify = FakeSystemd(workdir / f"notify-{workers}")
        with open(workdir / f"daemon-{workers}.stderr", "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emovoice_daemon.tools.cli", "run", "-c", str(self.config_path)], cwd=workdir,
                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **unit_environment(), **self.notify.env()})
        self.notify.wait_for(lambda m: m.get("READY") == "1", timeout=180)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.notify.close()


@dataclass
class Observed:
    """Events of one level, each with the monotonic time it arrived."""

    scores: list[tuple[float, dict]] = field(default_factory=list)
    ended: dict[str, dict] = field(default_factory=dict)


async def observe(daemon: Daemon, seen: Observed, calls: set[str], subscribed: asyncio.Event) -> None:
    """Record score and call.ended events of ``calls`` from /events until every call has ended."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"http://127.0.0.1:{daemon.api_port}/events"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers, max_msg_size=0) as ws:
        subscribed.set()
        async for msg in ws:
            now = time.monotonic()
            event = json.loads(msg.data)
            if event["call_id"] not in calls:
                continue
            if event["type"] == "score":
                seen.scores.append((now, event))
            elif event["type"] == "call.ended":
                seen.ended[event["call_id"]] = event
                if len(seen.ended) == len(calls):
                    return


def generate(plans: list[Plan]) -> list[Result]:
    """Run one generator process per plan (in parallel) and collect their results."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.callgen"], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE) for _ in plans]
    for proc, plan in zip(procs, plans):
        proc.stdin.write(pickle.dumps(plan))
        proc.stdin.close()
    results = [pickle.loads(proc.stdout.read()) for proc in procs]
    for proc in procs:
        proc.wait()
    return results


@dataclass
class Level:
    calls: int
    scored: float
    expected: int
    overload: int
    lag_ms: np.ndarray
    e2e_ms: np.ndarray
    daemon_cpu: float
    daemon_rss: int
    gen_cpu: float
    lateness_ms: np.ndarray
    load: float
    errors: list[str]
    second_share: float | None = None  # a cascade: share of scored windows its second model scored

    @property
    def generator_on_time(self) -> bool:
        """The generators played the level in real time (frames taken by the kernel when due)."""
        return len(self.lateness_ms) > 0 and _pct(self.lateness_ms, 99) < PASS_PACING_P99_MS

    @property
    def passed(self) -> bool:
        return (not self.errors and self.generator_on_time and self.scored >= PASS_SCORED
                and _pct(self.e2e_ms, 95) < PASS_P95_MS)

    def line(self) -> str:
        lag, e2e, late = self.lag_ms, self.e2e_ms, self.lateness_ms
        return (f"{self.calls:5d} calls  scored {100 * self.scored:6.2f}% of {self.expected}  overload {self.overload:5d}  "
                f"lag p50/p95/max {_pct(lag, 50):4.0f}/{_pct(lag, 95):4.0f}/{_pct(lag, 100):5.0f} ms  "
                f"e2e {_pct(e2e, 50):4.0f}/{_pct(e2e, 95):4.0f}/{_pct(e2e, 100):5.0f} ms  "
                f"daemon {100 * self.daemon_cpu:4.0f}% CPU {self.daemon_rss / 2**20:5.0f} MiB  "
                f"gen {100 * self.gen_cpu:3.0f}% CPU pacing p99/max {_pct(late, 99):4.1f}/{_pct(late, 100):5.1f} ms  "
                f"load {self.load:4.2f}  "
                + ("" if self.second_share is None else f"second model {100 * self.second_share:4.1f}% of windows  ")
                + f"{'PASS' if self.passed else 'FAIL'}"
                + ("" if self.generator_on_time else " (generator behind real time)")
                + (f"  errors: {len(self.errors)} e.g. {self.errors[0]}" if self.errors else ""))


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


async def run_level(daemon: Daemon, n: int, audio: list[list[bytes]], voiced: list[list[int]], args) -> Level:
    """``n`` concurrent calls; the figures of the level."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    which = [i % len(audio) for i in range(n)]
    t0 = time.monotonic() + 2.0
    hop = args.hop_s
    calls = [(encode_frame(Kind.UUID, uuid.UUID(cid).bytes), which[i], hop * i / n) for i, cid in enumerate(ids)]
    plans = [Plan("127.0.0.1", daemon.as_port, t0, audio, calls[g::args.generators]) for g in range(args.generators)]
    seen, subscribed = Observed(), asyncio.Event()
    watcher = asyncio.create_task(observe(daemon, seen, set(ids), subscribed))
    await subscribed.wait()
    load, cpu0, rss = os.getloadavg()[0], _cpu_s(daemon.proc.pid), [0]
    counted = await window_counts(daemon)

    async def sample_rss() -> None:
        while True:
            rss[0] = max(rss[0], _rss(daemon.proc.pid))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_rss())
    results = await asyncio.to_thread(generate, plans)
    wall = time.monotonic() - t0
    cpu1 = _cpu_s(daemon.proc.pid)
    errors = [e for r in results for e in r.errors if e]
    try:
        await asyncio.wait_for(watcher, 30)
    except TimeoutError:
        errors.append(f"only {len(seen.ended)} of {n} call.ended events within 30 s")
    sampler.cancel()
    scored, second = (now - then for now, then in zip(await window_counts(daemon), counted))
    sent_at = {}
    for g, r in enumerate(results):
        for (_, _, _), cid, times in zip(calls[g::args.generators], ids[g::args.generators], r.sent_at):
            sent_at[cid] = times
    index = {cid: which[i] for i, cid in enumerate(ids)}
    e2e = [1000 * (arrived - sent_at[ev["call_id"]][_last_frame(ev["window"]["end"])]) for arrived, ev in seen.scores]
    expected = sum(len(voiced[index[cid]]) for cid in ids)
    skipped = sum(ev["summary"]["windows_skipped"] for ev in seen.ended.values())
    nonspeech = sum(ev["summary"].get("windows_nonspeech", 0) for ev in seen.ended.values())  # the speech gate's
    windows = len(range(int(args.window_s * RATE), args.seconds * RATE + 1, int(hop * RATE)))
    silent = sum(windows - len(voiced[index[c]]) for c in seen.ended)
    return Level(n, (len(seen.scores) + nonspeech) / max(expected, 1), expected, skipped - silent - nonspeech,
                 np.array([ev["lag_ms"] for _, ev in seen.scores]), np.array(e2e), (cpu1 - cpu0) / wall, rss[0],
                 sum(r.cpu_s for r in results) / wall, 1000 * np.concatenate([r.lateness_s for r in results]),
                 load, errors, second / scored if second and scored else None)


async def window_counts(daemon: Daemon) -> tuple[float, float]:
    """From the daemon's /metrics: windows scored so far, and of those the ones a cascade's second model scored
    (worker processes report theirs every few seconds)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.get(f"http://127.0.0.1:{daemon.api_port}/metrics") as response:
            text = await response.text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return (float(values.get('emovoice_windows_total{outcome="scored"}', 0)),
            float(values.get("emovoice_cascade_second_windows_total", 0)))


def capacity(levels: list[tuple[int, bool]]) -> int:
    """Calls of the highest level (ascending ``(calls, passed)``) below the first that failed; 0 if the first failed."""
    held = 0
    for calls, passed in levels:
        if not passed:
            break
        held = calls
    return held


def _last_frame(end_s: float) -> int:
    """Index (UUID frame = 0) of the audio frame that carries a window's last sample."""
    return (round(end_s * RATE) - 1) // 160 + 1


async def leg(workers: int | str, audio: list[list[bytes]], voiced: list[list[int]], args, workdir: Path) -> int:
    """One daemon with ``workers``: every level until two fail; returns the capacity (see :func:`capacity`)."""
    daemon = Daemon(workdir, workers, args.model, args.threads, not args.no_speech_gate,
                    {"on": True, "off": False}.get(args.int8, "model"))
    outcomes: list[tuple[int, bool]] = []
    try:
        await run_level(daemon, 4, [a[:250] for a in audio], voiced, args)  # warm-up: 5 s calls, not reported
        print(f"workers {workers}: daemon pid {daemon.proc.pid}", flush=True)
        for n in args.levels:
            level = await run_level(daemon, n, audio, voiced, args)
            print(f"workers {workers}: {level.line()}", flush=True)
            outcomes.append((n, level.passed))
            if sum(not passed for _, passed in outcomes) == 2:
                break
            await asyncio.sleep(args.pause_s)
    finally:
        daemon.stop()
    return capacity(outcomes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated service.workers values, one daemon each")
    parser.add_argument("--levels", default="50,100,150,200,250,300", help="concurrent calls per level, ascending")
    parser.add_argument("--seconds", type=int, default=60, help="length of each call")
    parser.add_argument("--model", type=lambda p: str(Path(p).resolve()) if p else "", default="",
                        help="model directory (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=1, help="model.threads of the daemon (per worker)")
    parser.add_argument("--no-speech-gate", action="store_true", help="run the daemon with pipeline.speech_gate off")
    parser.add_argument("--int8", choices=("on", "off", "model"), default="model",
                        help="model.quantize_int8 of the daemon: on, off, or model: as the model directory says")
    parser.add_argument("--generators", type=int, default=1, help="generator processes")
    parser.add_argument("--speech", type=Path, default=SPEECH, help="CREMA-D AudioWAV directory")
    parser.add_argument("--emotions", default="", help="only CREMA-D clips of these emotions, e.g. NEU (calm "
                        "traffic: a cascade's second model runs on fewer windows); default: every clip")
    parser.add_argument("--distinct", type=int, default=16, help="distinct call recordings (cycled)")
    parser.add_argument("--pause-s", type=float, default=3.0, help="rest between levels")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the daemon (the finally blocks)
    args.levels = [int(n) for n in args.levels.split(",")]
    pipeline = PipelineConfig()
    args.hop_s, args.window_s = pipeline.hop_s, pipeline.window_s
    pcm, source = speech_calls(args.seconds, args.distinct, args.speech, tuple(filter(None, args.emotions.split(","))))
    audio = [audiosocket_frames(str(uuid.uuid4()), p)[1:] for p in pcm]
    voiced = [voiced_windows(p, pipeline) for p in pcm]
    print(f"speech: {len(pcm)} distinct {args.seconds} s calls (CREMA-D actors{', ' + args.emotions if args.emotions else ''}) from {source}; model {args.model or 'shipped'}, "
          f"threads {args.threads}; {os.cpu_count()} CPUs; load {os.getloadavg()}", flush=True)
    best = {}
    with tempfile.TemporaryDirectory(prefix="evcap") as tmp:
        for w in args.workers.split(","):
            workers: int | str = int(w) if w.isdigit() else w
            best[w] = asyncio.run(leg(workers, audio, voiced, args, Path(tmp)))
    for w, n in best.items():
        print(f"workers {w}: calls held (highest level below the first failure; >= {100 * PASS_SCORED:.0f}% scored, "
              f"e2e p95 < {PASS_P95_MS:.0f} ms, generator pacing p99 < {PASS_PACING_P99_MS:.0f} ms): {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
