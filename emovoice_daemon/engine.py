"""Scoring engine: gathers the windows due from all live legs, batches them, runs the model.

Each leg keeps the last ``window_s`` of 8 kHz audio. Every ``hop_s`` a window is due; due
windows from all legs queue in arrival order and one worker takes up to ``max_batch`` of
them (waiting at most ``max_wait_ms`` to fill a batch), skips the silent ones (VAD) and
the stale ones (older than ``max_lag_s``: back-pressure, so lag never grows without bound),
runs the model in a thread, and hands each result back on the event loop in order per leg.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import metrics
from .config import EngineConfig, PipelineConfig
from .dsp.resample import resample
from .models.loader import Classifier
from .vad import voiced_ratio

log = logging.getLogger(__name__)

RATE = 8000
MIN_FINAL_S = 1.0


@dataclass
class WindowResult:
    leg_id: str
    start_s: float
    end_s: float
    probs: np.ndarray | None
    skipped: str | None
    latency_ms: float


@dataclass
class _Window:
    leg_id: str
    start: int
    end: int
    audio: np.ndarray
    due: float


@dataclass
class _Leg:
    on_result: Callable[[WindowResult], None]
    buf: np.ndarray
    total: int = 0
    next_end: int = 0
    pending: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class ScoringEngine:
    """Batches due windows from every leg through one classifier."""

    def __init__(self, classifier: Classifier, pipeline: PipelineConfig, cfg: EngineConfig) -> None:
        self.classifier, self.pipeline, self.cfg = classifier, pipeline, cfg
        self.window = int(pipeline.window_s * RATE)
        self.hop = int(pipeline.hop_s * RATE)
        self._legs: dict[str, _Leg] = {}
        self._queue: asyncio.Queue[_Window] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="scoring-engine")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    def open_leg(self, leg_id: str, on_result: Callable[[WindowResult], None]) -> None:
        leg = _Leg(on_result, np.zeros(self.window, dtype=np.int16), next_end=self.window)
        leg.idle.set()
        self._legs[leg_id] = leg

    def push(self, leg_id: str, pcm: np.ndarray) -> None:
        """Append int16 8 kHz audio; queues every window that becomes due."""
        leg = self._legs[leg_id]
        pcm = pcm[-self.window:]
        leg.buf = np.concatenate([leg.buf[len(pcm):], pcm])
        leg.total += len(pcm)
        if leg.total >= leg.next_end:
            self._enqueue(leg_id, leg, leg.total - self.window, leg.total, leg.buf.copy())
            while leg.next_end <= leg.total:
                leg.next_end += self.hop

    def _enqueue(self, leg_id: str, leg: _Leg, start: int, end: int, audio: np.ndarray) -> None:
        leg.pending += 1
        leg.idle.clear()
        self._queue.put_nowait(_Window(leg_id, max(start, 0), end, audio, time.monotonic()))

    async def close_leg(self, leg_id: str) -> None:
        """Score a final partial window for a leg too short for a full one, wait for its results, drop it."""
        leg = self._legs.get(leg_id)
        if leg is None:
            return
        if leg.total < self.window and leg.total >= MIN_FINAL_S * RATE:
            self._enqueue(leg_id, leg, 0, leg.total, leg.buf[-leg.total:].copy())
        await leg.idle.wait()
        del self._legs[leg_id]

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._score(batch)
            except Exception:  # a model failure must not stop scoring for every other call
                log.exception("scoring a batch of %d windows failed", len(batch))
                self._deliver([(w, None, "error") for w in batch], time.monotonic())

    async def _next_batch(self) -> list[_Window]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
        while len(batch) < self.cfg.max_batch:
            try:
                timeout = max(deadline - time.monotonic(), 0)
                batch.append(await asyncio.wait_for(self._queue.get(), timeout) if timeout else self._queue.get_nowait())
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
        return batch

    async def _score(self, batch: list[_Window]) -> None:
        now = time.monotonic()
        results: list[tuple[_Window, np.ndarray | None, str | None]] = []
        todo: list[_Window] = []
        for w in batch:
            if now - w.due > self.cfg.max_lag_s:
                results.append((w, None, "overload"))
            elif voiced_ratio(w.audio, RATE, self.pipeline.vad_energy_dbfs) < self.pipeline.vad_min_voiced:
                results.append((w, None, "silence"))
            else:
                todo.append(w)
        if todo:
            probs = await asyncio.to_thread(self._predict, [w.audio for w in todo])
            results += [(w, p, None) for w, p in zip(todo, probs)]
            metrics.BATCH_SIZE.observe(len(todo))
        results.sort(key=lambda r: r[0].due)
        self._deliver(results, now)

    def _predict(self, audios: list[np.ndarray]) -> np.ndarray:
        rate = self.classifier.sampling_rate
        longest = max(len(a) for a in audios)
        x = np.zeros((len(audios), int(longest * rate / RATE)), dtype=np.float32)
        for i, a in enumerate(audios):
            y = resample(a.astype(np.float32) / 32768.0, RATE, rate)
            x[i, : len(y)] = y
        return self.classifier.predict(x)

    def _deliver(self, results: list[tuple[_Window, np.ndarray | None, str | None]], started: float) -> None:
        done = time.monotonic()
        for w, probs, skipped in results:
            lag_ms = (done - w.due) * 1000
            metrics.WINDOWS.labels(skipped or "scored").inc()
            if skipped is None:
                metrics.SCORING_LAG.observe(lag_ms / 1000)
            leg = self._legs.get(w.leg_id)
            if leg is None:
                continue
            try:
                leg.on_result(WindowResult(w.leg_id, w.start / RATE, w.end / RATE, probs, skipped, lag_ms))
            except Exception:  # one leg's failing consumer must not lose other legs' results
                log.exception("result handler of leg %s failed", w.leg_id)
            finally:
                leg.pending -= 1
                if leg.pending == 0:
                    leg.idle.set()
