"""Batch QA: score recorded calls with the daemon's own engine, policy and summary.

``emovoice-daemon score FILES|DIR -o OUT`` treats each WAV or FLAC file as one call: a mono file is one
``mixed`` leg, a stereo file one leg per channel (roles from ``--channels``, default
``customer,agent``). Files run concurrently through one :class:`ScoringEngine` (its batches
mix windows of every file) and the same :class:`CallManager` legs as live calls, as fast as
the model allows. Per call it writes ``<name>.json`` (summaries, escalations, scores) and
``<name>.png`` (timeline); for the batch ``calls.csv`` (one row per call) and
``batch.json`` with the throughput in audio hours per wall-clock hour (and the files under the directories
that were skipped as not WAV/FLAC).
"""
from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from emovoice_daemon.calls import CallManager
from emovoice_daemon.config import Config, EscalationConfig
from emovoice_daemon.judgement.policy import policy_factory, with_model_defaults
from emovoice_daemon.outputs.events import Event, EventBus
from emovoice_daemon.scoring.engine import RATE, ScoringEngine
from emovoice_daemon.scoring.models.loader import Classifier
from emovoice_daemon.scoring.resample import resample

log = logging.getLogger(__name__)

CHUNK_S = 30.0  # audio handed to the engine at a time; bounds the windows queued per file
CSV_FIELDS = ("file", "duration_s", "legs", "peak_negative", "peak_negative_at", "peak_role", "escalations",
              "alerts", "negative_share", "error")


class BatchError(Exception):
    """A file that cannot be scored (unreadable, wrong channel count)."""


@dataclass
class CallReport:
    """Everything the legs of one file published."""

    path: Path
    name: str
    duration_s: float = 0.0
    events: list[Event] = field(default_factory=list)
    error: str = ""

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["type"] == kind]

    def row(self) -> dict[str, Any]:
        """The CSV roll-up row."""
        ended = self.of("call.ended")
        if self.error or not ended:
            return {"file": str(self.path), "error": self.error or "no result"}
        peak = max(ended, key=lambda e: e["summary"]["peak_negative"])
        shares = {e["role"]: e["summary"]["class_share"]["NEGATIVE"] for e in ended}
        return {"file": str(self.path), "duration_s": round(self.duration_s, 2), "legs": len(ended),
                "peak_negative": peak["summary"]["peak_negative"], "peak_negative_at": peak["summary"]["peak_negative_at"],
                "peak_role": peak["role"], "escalations": sum(e["summary"]["escalations"] for e in ended),
                "alerts": sum(1 for e in self.of("escalation.raised") if e["severity"] == "alert"),
                "negative_share": ";".join(f"{role}={share}" for role, share in sorted(shares.items())), "error": ""}

    def report(self) -> dict[str, Any]:
        """The per-call JSON report."""
        return {"file": str(self.path), "duration_s": round(self.duration_s, 2),
                "legs": {e["role"]: e["summary"] for e in self.of("call.ended")},
                "escalations": [e for e in self.events if e["type"].startswith("escalation.")],
                "scores": [{"role": e["role"], "start": e["window"]["start"], "end": e["window"]["end"],
                            "probs": e["probs"], "negative_smoothed": e["negative_smoothed"]}
                           for e in self.of("score")]}


AUDIO_SUFFIXES = (".wav", ".flac")


def find_audio(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """The files named, and the WAV/FLAC files under named directories (sorted); second, the directories' other
    files (skipped). A missing path is a BatchError."""
    found: list[Path] = []
    skipped: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
            found += [q for q in files if q.suffix.lower() in AUDIO_SUFFIXES]
            skipped += [q for q in files if q.suffix.lower() not in AUDIO_SUFFIXES]
        elif p.is_file():
            found.append(p)
        else:
            raise BatchError(f"{p}: no such file or directory")
    return found, skipped


def load_channels(path: Path, roles: tuple[str, ...]) -> dict[str, np.ndarray]:
    """role -> 8 kHz int16 audio: ``mixed`` for mono, one role per channel for stereo."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise BatchError(f"{path}: not a readable audio file: {exc}") from None
    if data.shape[1] == 1:
        names: tuple[str, ...] = ("mixed",)
    elif data.shape[1] == len(roles):
        names = roles
    else:
        raise BatchError(f"{path}: {data.shape[1]} channels; expected mono or {len(roles)} ({', '.join(roles)})")
    return {role: np.clip(np.rint(resample(data[:, i], rate, RATE) * 32767), -32768, 32767).astype(np.int16)
            for i, role in enumerate(names)}


def unique_names(paths: list[Path]) -> list[str]:
    """Output base names: the file stem, made unique with its parent folders when stems repeat."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else "__".join([*p.parent.parts[-2:], s]).replace("/", "_")
            for s, p in zip(stems, paths)]


class BatchScorer:
    """Scores files through one engine and call manager; events are routed to each file's report."""

    def __init__(self, classifier: Classifier, config: Config, roles: tuple[str, ...]) -> None:
        # offline: windows may wait for the model as long as needed, never skipped as overload
        engine_cfg = dataclasses.replace(config.engine, max_lag_s=float("inf"))
        self.engine = ScoringEngine(classifier, config.pipeline, engine_cfg)
        config.escalation = with_model_defaults(config.escalation, classifier.escalation)
        self.bus = EventBus()
        self.bus.add_sink(self._route)
        model_info = {"name": classifier.name, "trained": classifier.trained}
        self.calls = CallManager(self.engine, self.bus, policy_factory(config.escalation), model_info)
        self.roles = roles
        self.reports: dict[str, CallReport] = {}

    def _route(self, event: Event) -> None:
        self.reports[event["call_id"]].events.append(event)

    async def score(self, path: Path, name: str, on_audio: Any) -> CallReport:
        report = self.reports[name] = CallReport(path, name)
        try:
            channels = await asyncio.to_thread(load_channels, path, self.roles)
        except BatchError as exc:
            report.error = str(exc)
            return report
        return await self.score_channels(name, channels, {"file": str(path)}, on_audio)

    async def score_channels(self, name: str, channels: dict[str, np.ndarray], meta: dict[str, Any],
                             on_audio: Any = lambda s: None) -> CallReport:
        """Score one call given as role -> int16 8 kHz audio (its legs' meta: ``meta``)."""
        report = self.reports.setdefault(name, CallReport(Path(name), name))
        report.duration_s = max(len(pcm) for pcm in channels.values()) / RATE
        legs = {role: self.calls.start_leg(name, role, "batch", meta) for role in channels}
        chunk = int(CHUNK_S * RATE)
        for offset in range(0, len(next(iter(channels.values()))), chunk):
            for role, leg in legs.items():
                leg.feed(channels[role][offset:offset + chunk])
            await self._caught_up(legs.values())
            on_audio(min(CHUNK_S, report.duration_s - offset / RATE))
        for leg in legs.values():
            await leg.end("eof")
        return report

    async def _caught_up(self, legs: Any) -> None:
        """Wait until every window due so far has a result (keeps memory bounded on long files)."""
        window, hop = self.engine.window, self.engine.hop
        while any(leg.stats.scored + leg.stats.skipped < max(0, (leg.samples - window) // hop + 1) for leg in legs):
            await asyncio.sleep(0.005)


def write_outputs(report: CallReport, out_dir: Path, escalation: EscalationConfig) -> None:
    """``<name>.json`` and the timeline ``<name>.png``."""
    (out_dir / f"{report.name}.json").write_text(json.dumps(report.report(), indent=1))
    plot_timeline(report, out_dir / f"{report.name}.png", escalation)


def plot_timeline(report: CallReport, path: Path, escalation: EscalationConfig) -> None:
    """NEGATIVE (raw and smoothed) per leg over the call, thresholds, escalation periods shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for role in sorted({e["role"] for e in report.of("score")}):
        scores = [e for e in report.of("score") if e["role"] == role]
        t = [e["window"]["end"] for e in scores]
        ax.plot(t, [e["probs"]["NEGATIVE"] for e in scores], lw=0.6, alpha=0.4, label=f"{role} NEGATIVE")
        ax.plot(t, [e["negative_smoothed"] for e in scores], lw=1.6, label=f"{role} smoothed")
    for ended in report.of("call.ended"):
        for period in ended["summary"]["escalation_log"]:
            color = "tab:red" if period["severity"] == "alert" else "gold"
            ax.axvspan(period["at"], period.get("cleared_at", report.duration_s), color=color, alpha=0.15)
    ax.axhline(escalation.enter, color="tab:red", ls="--", lw=0.8, label="enter")
    ax.axhline(escalation.exit, color="tab:green", ls=":", lw=0.8, label="exit")
    ax.set(xlim=(0, max(report.duration_s, 1.0)), ylim=(0, 1), xlabel="seconds", ylabel="P(NEGATIVE)",
           title=report.path.name)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)  # beside the plot, not on it
    fig.tight_layout()
    fig.savefig(path)


def write_rollup(reports: list[CallReport], out_dir: Path, wall_s: float, model: dict[str, Any],
                 skipped: list[Path]) -> dict[str, Any]:
    """``calls.csv`` and ``batch.json`` (with throughput); returns the batch summary."""
    with open(out_dir / "calls.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(r.row() for r in reports)
    audio_s = sum(r.duration_s for r in reports if not r.error)
    summary = {"files": len(reports), "failed": sum(1 for r in reports if r.error),
               "audio_hours": round(audio_s / 3600, 4), "wall_s": round(wall_s, 2),
               "throughput_audio_h_per_wall_h": round(audio_s / wall_s, 1) if wall_s > 0 else None, "model": model,
               "skipped": [str(p) for p in skipped]}
    (out_dir / "batch.json").write_text(json.dumps(summary, indent=1))
    return summary


async def score_files(inputs: list[Path], out_dir: Path, config: Config, classifier: Classifier,
                      roles: tuple[str, ...] = ("customer", "agent"), jobs: int = 8,
                      progress: bool = True) -> dict[str, Any]:
    """Score every WAV/FLAC file under ``inputs`` into ``out_dir``; returns the batch summary."""
    paths, skipped = find_audio(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    scorer = BatchScorer(classifier, config, roles)
    started = time.monotonic()
    await scorer.engine.start()
    slots = asyncio.Semaphore(jobs)
    total_s = sum(_duration(p) for p in paths)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                  TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task("scoring", total=total_s)

        async def one(path: Path, name: str) -> CallReport:
            async with slots:
                report = await scorer.score(path, name, lambda s: bar.advance(task, s))
                if not report.error:
                    await asyncio.to_thread(write_outputs, report, out_dir, config.escalation)
                return report

        try:
            reports = list(await asyncio.gather(*(one(p, n) for p, n in zip(paths, unique_names(paths)))))
        finally:
            await scorer.engine.stop()
    model = {"name": classifier.name, "trained": classifier.trained}
    return write_rollup(reports, out_dir, time.monotonic() - started, model, skipped)


def _duration(path: Path) -> float:
    try:
        return sf.info(str(path)).duration
    except (RuntimeError, sf.LibsndfileError):
        return 0.0
