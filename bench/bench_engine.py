"""How many concurrent real-time call legs can be scored with p95 lag under 500 ms?

Compares, in one run on this machine, (a) the naive approach - a Hugging Face
``pipeline("audio-classification")`` run on each 3 s window independently, one at a
time, as the seed README did - with (b) ``ScoringEngine`` (dynamic batching, streaming
CNN front-end, back-pressure). Both use a DistilHuBERT-shaped model (HuBERT-base CNN
front-end + 2 transformer layers of hidden 768, 12 heads, FFN 3072; random weights, which
cost the same as trained ones) on real speech looped per leg, 1 s hop, 3 s window.

Each trial runs N legs in real time (starts staggered over one window, 20 ms chunks) for
``--trial-s`` seconds; a leg count is sustained when the p95 lag from "window due" to
"result delivered" is under 500 ms, counting windows skipped for overload or still
unanswered as infinitely late. Each leg's first window is left out of the statistics
(steady state: the engine computes a leg's first window whole, as the naive path does
every window; real calls start at random times, so few legs are in that state at once). Leg counts double until a trial fails, then a binary
search narrows the gap. Runs on CUDA when present.

    .venv/bin/python -m bench.bench_engine            # a few minutes on a 2-core CPU
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emovoice_daemon.config import EngineConfig, ModelConfig, PipelineConfig  # noqa: E402
from emovoice_daemon.scoring.engine import RATE, Ring, ScoringEngine, WindowResult  # noqa: E402
from emovoice_daemon.scoring.models.compact import LABELS  # noqa: E402
from emovoice_daemon.scoring.models.loader import load_classifier  # noqa: E402
from emovoice_daemon.scoring.resample import resample  # noqa: E402

LAG_LIMIT_S = 0.5
LATE_MS = 1e9  # a window skipped or never answered
TICK_S = 0.02
SHARED = REPO / ".." / "shared"


class Scorer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def open_leg(self, leg_id: str, on_result: Any) -> None: ...
    def push(self, leg_id: str, pcm: np.ndarray) -> None: ...


def distilhubert_dir(path: Path, front_end_norm: str = "group") -> Path:
    """Save a randomly initialised DistilHuBERT-shaped classifier as an HF directory.

    ``front_end_norm="layer"``: per-frame LayerNorm in every CNN layer (HuBERT-large's choice) instead of
    DistilHuBERT's whole-input GroupNorm in the first, i.e. a model trained to stream exactly.
    """
    from transformers import HubertConfig, HubertForSequenceClassification, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    config = HubertConfig(num_hidden_layers=2, num_labels=3, feat_extract_norm=front_end_norm,
                          id2label=dict(enumerate(LABELS)),
                          label2id={k: i for i, k in enumerate(LABELS)})
    HubertForSequenceClassification(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(path)
    return path


def speech() -> list[np.ndarray]:
    """8 kHz int16 speech to loop per leg: the shared recordings, else espeak-ng, else a synthetic vowel train."""
    calls = []
    source = SHARED / "asterisk" / "source_speech_8k.wav"
    if source.exists():
        calls.append(sf.read(source, dtype="int16")[0])
    for clip in sorted((SHARED / "data" / "cremad" / "AudioWAV").glob("10[0-2]?_*_XX.flac"))[:30]:
        calls.append(sf.read(clip, dtype="int16")[0])
    if calls:
        return [np.concatenate(calls[i::4]) for i in range(min(4, len(calls)))]
    t = np.arange(8000 * 10) / 8000
    vowel = np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    return [(vowel * 8000).astype(np.int16)]


class NaiveScorer:
    """The seed README's approach: every due window through ``pipeline()`` on its own, FIFO, no batching."""

    def __init__(self, model_dir: Path, pipeline_cfg: PipelineConfig, device: str) -> None:
        from transformers import pipeline

        self.pipe = pipeline("audio-classification", model=str(model_dir), device=device)
        self.rate = self.pipe.feature_extractor.sampling_rate
        self.window, self.hop = int(pipeline_cfg.window_s * RATE), int(pipeline_cfg.hop_s * RATE)
        self.legs: dict[str, tuple[Ring, Any, list[int]]] = {}
        self.queue: asyncio.Queue[tuple[str, int, np.ndarray, float]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.executor.shutdown(wait=True)

    def open_leg(self, leg_id: str, on_result: Any) -> None:
        self.legs[leg_id] = (Ring(self.window, np.int16), on_result, [self.window])

    def push(self, leg_id: str, pcm: np.ndarray) -> None:
        ring, _, next_end = self.legs[leg_id]
        while len(pcm):
            take = min(len(pcm), next_end[0] - ring.total)
            ring.write(pcm[:take])
            pcm = pcm[take:]
            if ring.total == next_end[0]:
                self.queue.put_nowait((leg_id, next_end[0], ring.last(self.window), time.monotonic()))
                next_end[0] += self.hop

    def leg_bytes(self, leg_id: str) -> int:
        return self.legs[leg_id][0].buf.nbytes

    def _classify(self, audio: np.ndarray) -> list[dict[str, Any]]:
        return self.pipe(resample(audio, RATE, self.rate) / 32768.0, top_k=3)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            leg_id, end, audio, due = await self.queue.get()
            out = await loop.run_in_executor(self.executor, self._classify, audio)
            probs = np.array([next(o["score"] for o in out if o["label"] == k) for k in LABELS])
            result = WindowResult(leg_id, (end - self.window) / RATE, end / RATE, probs, None,
                                  (time.monotonic() - due) * 1000)
            self.legs[leg_id][1](result)


def _ms(value: float) -> str:
    return "inf" if value >= LATE_MS else f"{value:.0f}"


@dataclass
class Trial:
    legs: int
    windows: int
    p50_ms: float
    p95_ms: float
    skipped: int
    unanswered: int
    leg_bytes: float
    p99_ms: float = LATE_MS
    judged_at: int = 95  # the lag percentile that must stay under the limit

    @property
    def sustained(self) -> bool:
        return self.windows > 0 and (self.p99_ms if self.judged_at == 99 else self.p95_ms) < LAG_LIMIT_S * 1000

    def row(self, name: str) -> str:
        ok = "yes" if self.sustained else "no"
        return (f"{name:7s} {self.legs:5d} {self.windows:8d} {_ms(self.p50_ms):>9s} {_ms(self.p95_ms):>9s} "
                f"{_ms(self.p99_ms):>9s} {self.skipped:8d} {self.unanswered:10d} {ok:>9s}")


async def trial(scorer: Scorer, n_legs: int, seconds: float, calls: list[np.ndarray], hop_s: float,
                judged_at: int = 95) -> Trial:
    """Run ``n_legs`` real-time legs for ``seconds``; lag statistics over all windows due."""
    await scorer.start()
    results: list[WindowResult] = []
    rng = np.random.default_rng(n_legs)
    offsets = rng.uniform(0, 3.0, n_legs)
    audio = [np.roll(calls[i % len(calls)], int(rng.integers(0, 8000 * 5))) for i in range(n_legs)]
    sent = [0] * n_legs
    for i in range(n_legs):
        scorer.open_leg(f"leg{i}:mixed", results.append)
    t0 = time.monotonic()
    while (now := time.monotonic() - t0) < seconds:
        for i in range(n_legs):
            upto = int(max(0.0, now - offsets[i]) * RATE)
            while sent[i] < upto:
                take = min(upto - sent[i], 160)
                a = audio[i]
                scorer.push(f"leg{i}:mixed", a[np.arange(sent[i], sent[i] + take) % len(a)])
                sent[i] += take
        await asyncio.sleep(TICK_S)
    due = sum(max(0, (s - 3 * RATE) // int(hop_s * RATE) + 1) for s in sent)
    drain_until = time.monotonic() + 2 * LAG_LIMIT_S
    while len(results) < due and time.monotonic() < drain_until:
        await asyncio.sleep(0.02)
    leg_bytes = float(np.mean([scorer.leg_bytes(f"leg{i}:mixed") for i in range(n_legs)]))
    await scorer.stop()
    by_leg: dict[str, list[float]] = {}
    for r in results:
        by_leg.setdefault(r.leg_id, []).append(r.latency_ms if r.skipped is None else LATE_MS)
    steady = [lag for lags in by_leg.values() for lag in lags[1:]]
    missing = due - len(results)
    steady += [LATE_MS] * missing
    p50, p95, p99 = (float(np.percentile(steady, q, method="nearest")) if steady else LATE_MS for q in (50, 95, 99))
    return Trial(n_legs, len(steady), p50, p95, sum(r.skipped is not None for r in results), missing, leg_bytes, p99,
                 judged_at)


async def cost(scorer: Scorer, n_legs: int, n_windows: int, calls: list[np.ndarray]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per scored window, ``n_legs`` legs of ``n_windows`` windows each pushed at once.

    Independent of real-time pacing, and CPU time is far less sensitive than wall time to
    other processes on a shared machine. Every window must be scored (none skipped).
    """
    await scorer.start()
    done: list[WindowResult] = []
    samples = (3 + n_windows - 1) * RATE
    for i in range(n_legs):
        scorer.open_leg(f"leg{i}:mixed", done.append)
    cpu, wall = time.process_time(), time.monotonic()
    for i in range(n_legs):
        a = calls[i % len(calls)]
        scorer.push(f"leg{i}:mixed", a[np.arange(samples) % len(a)])
    while len(done) < n_legs * n_windows:
        await asyncio.sleep(0.01)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    await scorer.stop()
    skipped = sum(r.skipped is not None for r in done)
    if skipped:
        raise RuntimeError(f"{skipped} windows were skipped in the cost phase")
    return cpu / len(done), wall / len(done)


async def max_legs(name: str, make: Any, calls: list[np.ndarray], args: argparse.Namespace) -> list[Trial]:
    """Double the leg count until a trial fails, then binary-search; returns every trial run."""
    trials: list[Trial] = []

    async def run(n: int) -> bool:
        t = await trial(make(), n, args.trial_s, calls, args.hop_s, args.judge_at)
        trials.append(t)
        print(t.row(name), flush=True)
        return t.sustained

    good, bad, n = 0, None, 1
    while bad is None and n <= args.max_legs:
        if await run(n):
            good, n = n, n * 2
        else:
            bad = n
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if await run(mid):
            good = mid
        else:
            bad = mid
    trials.append(Trial(good, 0, 0, 0, 0, 0, 0))  # the answer, carried in the last entry
    return trials


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


async def main(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.cuda and device != "cuda":
        print("bench_engine --cuda: no CUDA device on this machine: skipped")
        return
    pipe_cfg = PipelineConfig(window_s=3.0, hop_s=args.hop_s, vad_min_voiced=args.vad_min_voiced)
    engine_cfg = EngineConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_lag_s=LAG_LIMIT_S,
                              streaming=not args.no_streaming, stream_drift=args.stream_drift)
    unbounded = dataclasses.replace(engine_cfg, max_lag_s=1e9)  # the cost phase scores every window
    calls = speech()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or distilhubert_dir(Path(tmp) / "distilhubert-shaped", args.front_end_norm)
        base_rss = rss_mb()
        classifier = load_classifier(ModelConfig(path=str(model_dir), device=device, threads=args.threads,
                                                 quantize_int8={"on": True, "off": False}.get(args.int8, "model"),
                                                 site_stats_path=""))  # in memory: a bench never teaches the live site
        int8 = any("quantized" in type(m).__module__ for m in classifier.model.modules())
        params = sum(p.numel() for p in classifier.model.parameters()) / 1e6
        model_rss = rss_mb()
        shape = f"model {args.model}" if args.model else f"DistilHuBERT-shaped model ({args.front_end_norm}-norm front-end)"
        print(f"device {device} ({torch.get_num_threads()} threads), load average {load[0]:.2f} on "
              f"{os.cpu_count()} CPUs; {shape}, {params:.1f} M parameters"
              f"{', int8 linear layers' if int8 else ''}; {len(calls)} speech loops; RSS with model "
              f"{model_rss:.0f} MB (+{model_rss - base_rss:.0f} MB)")
        print(f"cost per window, {args.cost_legs} legs x {args.cost_windows} windows pushed at once "
              f"(a leg's first window included):")
        for name, make in (("naive", lambda: NaiveScorer(model_dir, pipe_cfg, device)),
                           ("engine", lambda: ScoringEngine(classifier, pipe_cfg, unbounded))):
            if name == "naive" and args.engine_only:
                continue
            cpu_s, wall_s = await cost(make(), args.cost_legs, args.cost_windows, calls)
            print(f"  {name:7s} {cpu_s * 1000:6.0f} ms CPU, {wall_s * 1000:6.0f} ms wall", flush=True)
        if args.skip_trials:
            return
        print(f"{'':7s} {'legs':>5s} {'windows':>8s} {'p50 ms':>9s} {'p95 ms':>9s} {'p99 ms':>9s} {'skipped':>8s} "
              f"{'unanswered':>10s} {'sustained':>9s}")
        naive: list[Trial] = []
        if not args.engine_only:
            naive = await max_legs("naive", lambda: NaiveScorer(model_dir, pipe_cfg, device), calls, args)
        engine = await max_legs("engine", lambda: ScoringEngine(classifier, pipe_cfg, engine_cfg), calls, args)
    n_naive, n_engine = (naive[-1].legs if naive else None), engine[-1].legs
    one = {name: next((t for t in ts[:-1] if t.legs == 1), None) for name, ts in (("naive", naive), ("engine", engine))}
    print()
    for name, t in one.items():
        if t is not None:
            print(f"per-window latency, 1 leg ({name}): p50 {_ms(t.p50_ms)} ms, p95 {_ms(t.p95_ms)} ms")
    best = max((t for t in engine[:-1] if t.sustained), key=lambda t: t.legs, default=engine[0])
    print(f"per-leg engine state: {best.leg_bytes / 1024:.0f} KiB (audio buffers + front-end cache), "
          f"at {best.legs} legs")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"sustained legs at p{args.judge_at} lag < {LAG_LIMIT_S * 1000:.0f} ms on {device}: naive {n_naive}, "
          f"engine {n_engine}", end="")
    if n_naive:
        print(f", ratio {n_engine / n_naive:.1f}x")
    else:
        print(" (the naive pipeline cannot keep even one leg under the limit)" if naive else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trial-s", type=float, default=9.0, help="seconds per trial (first window after 3 s)")
    p.add_argument("--hop-s", type=float, default=1.0)
    p.add_argument("--max-legs", type=int, default=512)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--model", type=Path, help="score with this model directory (e.g. emovoice_daemon/scoring/models/default) "
                   "instead of a random DistilHuBERT-shaped one")
    p.add_argument("--front-end-norm", choices=("group", "layer"), default="group",
                   help="group: DistilHuBERT as released; layer: per-frame LayerNorm CNN, which streams exactly")
    p.add_argument("--int8", choices=("on", "off", "model"), default="model", help="int8 dynamic quantisation of linear layers (CPU): on, off, or model: as the "
                                         "model directory says (default)")
    p.add_argument("--no-streaming", action="store_true", help="engine without the streaming front-end")
    p.add_argument("--stream-drift", type=float, default=0.05, help="engine.stream_drift (1e9: never recompute)")
    p.add_argument("--vad-min-voiced", type=float, default=0.0, help="0 scores every window, like the naive path")
    p.add_argument("--engine-only", action="store_true")
    p.add_argument("--skip-trials", action="store_true", help="cost per window only, no real-time search")
    p.add_argument("--cost-legs", type=int, default=4, help="legs in the cost-per-window phase")
    p.add_argument("--cost-windows", type=int, default=6, help="windows per leg in the cost phase")
    p.add_argument("--judge-at", type=int, choices=(95, 99), default=95, help="lag percentile a sustained trial keeps < 500 ms")
    p.add_argument("--cuda", action="store_true", help="GPU figures only: without a CUDA device, say so and exit 0")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
