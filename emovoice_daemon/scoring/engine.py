"""Scoring engine: gathers the windows due from all live legs, batches them, runs the model.

Each leg keeps the last ``window_s`` of its audio (8 kHz for the VAD, model rate for the
model, resampled with one :class:`StreamResampler` per leg). Every ``hop_s`` a window is
due: silent ones (VAD) are answered at once, the others queue in arrival order; in the inference thread the
speech gate (:mod:`.speech`) answers ``nonspeech`` for those without human speech before the model runs. One
worker takes up to ``max_batch`` of them (waiting at most ``max_wait_ms`` to fill a batch)
and runs the model in a dedicated thread; HuBERT/wav2vec2-shaped models use the streaming
front-end (:mod:`.streaming`). Results reach ``on_result`` on the event loop, in order per
leg. Back-pressure: a leg has at most one window waiting; when a newer window is due
before the waiting one was taken, the waiting one is answered ``overload`` and the new one
takes its place in the queue (that leg's hop widens, no leg loses its turn), and windows
waiting longer than ``max_lag_s`` are answered ``overload`` - lag never grows without bound.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from emovoice_daemon.config import EngineConfig, PipelineConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring import chunked, streaming
from emovoice_daemon.scoring.models.cascade import Cascade
from emovoice_daemon.scoring.models.loader import Classifier
from emovoice_daemon.scoring.resample import StreamResampler
from emovoice_daemon.scoring.speech import WARM_S, SpeechGate
from emovoice_daemon.scoring.vad import FRAME_S, voiced_frames

log = logging.getLogger(__name__)

RATE = 8000
VAD_FRAME = int(RATE * FRAME_S)
MIN_FINAL_S = 1.0  # a leg too short for a full window is scored on close if it has this much


@dataclass
class WindowResult:
    """The outcome of one window of one leg; ``probs`` is None when ``skipped`` says why. ``features``: the
    window's unnormalised pooled head input (float32[F]) for models that have one (the encoder model), else None."""

    leg_id: str
    start_s: float
    end_s: float
    probs: np.ndarray | None
    skipped: str | None
    latency_ms: float
    features: np.ndarray | None = None


class Ring:
    """Fixed-capacity buffer of the most recent samples."""

    def __init__(self, capacity: int, dtype: type) -> None:
        self.buf = np.zeros(capacity, dtype=dtype)
        self.total = 0  # samples ever written

    def write(self, x: np.ndarray) -> None:
        x = x[-len(self.buf):]
        pos = self.total % len(self.buf)
        head = min(len(x), len(self.buf) - pos)
        self.buf[pos : pos + head] = x[:head]
        self.buf[: len(x) - head] = x[head:]
        self.total += len(x)

    def last(self, n: int) -> np.ndarray:
        """Copy of the newest ``n`` samples (n <= capacity and <= total)."""
        end = self.total % len(self.buf)
        if n <= end:
            return self.buf[end - n : end].copy()
        return np.concatenate((self.buf[len(self.buf) - (n - end) :], self.buf[:end]))


@dataclass(eq=False)
class _Window:
    leg: "_Leg"
    seq: int
    start: int  # 8 kHz sample index
    end: int
    audio: np.ndarray  # float32 at the model's rate
    audio_start: int  # model-rate index of audio[0]
    due: float
    tail: np.ndarray  # int16 8 kHz: the newest hop and the speech gate's warm-up before it
    queued: float = 0.0


@dataclass(eq=False)
class _Leg:
    leg_id: str
    on_result: Callable[[WindowResult], None]
    pcm: Ring
    wave: Ring
    resampler: StreamResampler | None  # None when the model runs at 8 kHz
    vad: Ring  # voiced flag of each 20 ms frame, newest last
    resampled: int = 0  # 8 kHz samples already passed to the resampler
    pending: list[np.ndarray] = field(default_factory=list)  # pushed audio not yet in ``pcm``
    pending_n: int = 0
    next_end: int = 0
    next_seq: int = 0
    delivered: int = 0
    waiting: _Window | None = None
    ready: dict[int, tuple[WindowResult, float]] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    cache: streaming.LegCache = field(default_factory=streaming.LegCache)
    chunks: chunked.LegChunks = field(default_factory=chunked.LegChunks)
    speech: deque[tuple[int, float]] = field(default_factory=deque)  # (hop end, its speech share), newest last

    def nbytes(self) -> int:
        return self.pcm.buf.nbytes + self.wave.buf.nbytes + self.vad.buf.nbytes + self.cache.nbytes() + self.chunks.nbytes()


class ScoringEngine:
    """Batches due windows from every leg through one classifier."""

    def __init__(self, classifier: Classifier | Cascade, pipeline: PipelineConfig, cfg: EngineConfig) -> None:
        self.classifier, self.pipeline, self.cfg = classifier, pipeline, cfg
        self.window = int(round(pipeline.window_s * RATE))
        self.hop = int(round(pipeline.hop_s * RATE))
        self.model_rate = classifier.sampling_rate
        self._use(classifier)
        self.gate = SpeechGate.load() if pipeline.speech_gate else None
        self.tail = self.hop + int(WARM_S * RATE)
        self._legs: dict[str, _Leg] = {}
        self._queue: deque[_Window] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emovoice-infer")
        self._worker: asyncio.Task[None] | None = None
        self._stopped = False
        self.outcomes: Counter[str] = Counter()  # windows answered, by outcome (scored, silence, overload, error)
        self._inflight: list[_Window] = []

    def _streaming_front_end(self) -> streaming.StreamingFrontEnd | None:
        """The streaming front-end, if every window starts on the encoder's frame grid."""
        front = streaming.StreamingFrontEnd(self.classifier, self.cfg.stream_drift)
        step = front.stride * RATE  # window and hop, in 8 kHz samples times model rate, must be whole frames
        if (self.window * self.model_rate) % step or (self.hop * self.model_rate) % step:
            log.warning("window %.3f s / hop %.3f s are not multiples of the model's %.1f ms frames: "
                        "scoring whole windows", self.pipeline.window_s, self.pipeline.hop_s,
                        1000 * front.stride / self.model_rate)
            return None
        return front

    def _chunked_front_end(self) -> chunked.ChunkedFrontEnd | None:
        """Per-leg chunk sums, if the hop is the model's chunk and the window whole chunks."""
        front = chunked.ChunkedFrontEnd(self.classifier)
        if self.window * self.model_rate % RATE or not front.fits(self.window * self.model_rate // RATE,
                                                                   self.hop * self.model_rate // RATE):
            log.info("hop %.3f s is not the model's %.3f s chunk or the window not whole chunks: every chunk of a "
                     "window is encoded", self.pipeline.hop_s, front.chunk / self.model_rate)
            return None
        return front

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="scoring-engine")

    async def stop(self) -> None:
        """Stop the worker; windows still queued or in flight, or due later, are answered ``overload``."""
        self._stopped = True
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=False)  # a batch in flight finishes unheard; the loop is not blocked
        for w in [*self._inflight, *self._queue]:
            self._finish(w.leg, w.seq, w.start, w.end, None, "overload", w.due)
        self._inflight, self._queue = [], deque()

    def set_classifier(self, classifier: Classifier | Cascade) -> None:
        """Score every window from now on with ``classifier`` (same sampling rate: the legs' resamplers stay); a
        batch in flight finishes with the old one. Live legs go on without a gap."""
        if classifier.sampling_rate != self.model_rate:
            raise ValueError(f"the new model runs at {classifier.sampling_rate} Hz, the live one at {self.model_rate} Hz")
        for adapter in self.adapters:
            adapter.save()  # the new model's adapters start from the site statistics learnt so far
        self._use(classifier)

    def _use(self, classifier: Classifier | Cascade) -> None:
        """The classifier, its line statistics (models with pooled features) and the front-end that fits it."""
        self.classifier = classifier
        self.adapters = getattr(classifier, "adapters", [])  # line statistics of models with pooled features
        self.frontend = self._streaming_front_end() if self.cfg.streaming and streaming.supports(classifier) else None
        self.chunked = self._chunked_front_end() if chunked.supports(classifier) else None

    @property
    def live_legs(self) -> int:
        return len(self._legs)

    def leg_bytes(self, leg_id: str) -> int:
        """Memory held by one leg's buffers and front-end cache."""
        return self._legs[leg_id].nbytes()

    def open_leg(self, leg_id: str, on_result: Callable[[WindowResult], None]) -> None:
        """Start buffering a leg; its results go to ``on_result``."""
        if leg_id in self._legs:
            raise ValueError(f"leg {leg_id} is already open")
        model_window = int(np.ceil(self.window * self.model_rate / RATE))
        leg = _Leg(leg_id, on_result, Ring(self.window + VAD_FRAME, np.int16), Ring(model_window, np.float32),
                   StreamResampler(RATE, self.model_rate) if self.model_rate != RATE else None,
                   Ring(self.window // VAD_FRAME + 1, bool), next_end=self.window)
        leg.idle.set()
        self._legs[leg_id] = leg

    def push(self, leg_id: str, pcm: np.ndarray) -> None:
        """Append int16 8 kHz audio; every window it completes becomes due.

        Chunks are only queued until a window is due, then copied into the leg's buffer at once:
        the 20 ms path does no array work.
        """
        leg = self._legs.get(leg_id)
        if leg is None:
            raise KeyError(f"push to leg {leg_id!r}, which is not open")
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
            pcm = np.asarray(pcm)
            raise ValueError(f"leg audio must be 1-D int16 at 8 kHz, got {pcm.dtype} shape {pcm.shape}")
        leg.pending.append(pcm)
        leg.pending_n += len(pcm)
        if leg.pcm.total + leg.pending_n >= leg.next_end:
            self._take_pending(leg)

    def _take_pending(self, leg: _Leg) -> None:
        """Move the queued chunks into the leg's buffer, making each window they complete due."""
        if not leg.pending:
            return
        pcm = leg.pending[0] if len(leg.pending) == 1 else np.concatenate(leg.pending)
        leg.pending, leg.pending_n = [], 0
        while len(pcm):
            take = min(len(pcm), leg.next_end - leg.pcm.total)
            leg.pcm.write(pcm[:take])
            pcm = pcm[take:]
            if leg.pcm.total == leg.next_end:
                self._window_due(leg, leg.next_end - self.window, leg.next_end)
                leg.next_end += self.hop

    async def close_leg(self, leg_id: str) -> None:
        """Score what is due (and a short leg's only, partial window), wait for the results, drop the leg."""
        leg = self._legs.get(leg_id)
        if leg is None:
            return
        self._take_pending(leg)
        if leg.next_seq == 0 and leg.pcm.total >= MIN_FINAL_S * RATE:
            self._window_due(leg, 0, leg.pcm.total)
        await leg.idle.wait()
        del self._legs[leg_id]
        for adapter in self.adapters:
            adapter.close_leg(leg_id)

    def _window_due(self, leg: _Leg, start: int, end: int) -> None:
        new = leg.pcm.last(end - leg.resampled)
        if len(new):
            wave = leg.resampler.process(new) if leg.resampler else new.astype(np.float32)
            leg.wave.write(wave / np.float32(32768.0))
            leg.resampled = end
        now = time.monotonic()
        seq, leg.next_seq = leg.next_seq, leg.next_seq + 1
        leg.idle.clear()
        if self._voiced_share(leg, start, end) < self.pipeline.vad_min_voiced:
            self._finish(leg, seq, start, end, None, "silence", now)
            return
        n = min(leg.wave.total, int(round((end - start) * self.model_rate / RATE)))
        tail = leg.pcm.last(min(self.tail, end)) if self.gate is not None else np.zeros(0, np.int16)
        window = _Window(leg, seq, start, end, leg.wave.last(n), leg.wave.total - n, now, tail)
        if self._stopped:
            self._finish(leg, seq, start, end, None, "overload", now)
            return
        stale = leg.waiting
        if stale is not None and now - stale.due > self.pipeline.hop_s / 2:
            self._finish(leg, stale.seq, stale.start, stale.end, None, "overload", stale.due)
            window.queued = stale.queued
            self._queue[self._queue.index(stale)] = window  # keeps the leg's place in line
        else:
            window.queued = now
            self._queue.append(window)
        leg.waiting = window
        self._arrived.set()

    def _voiced_share(self, leg: _Leg, start: int, end: int) -> float:
        """Share of voiced 20 ms frames in [start, end); each frame is judged once, on the leg's 20 ms grid."""
        done = leg.vad.total * VAD_FRAME
        upto = end // VAD_FRAME * VAD_FRAME
        if upto > done:
            leg.vad.write(voiced_frames(leg.pcm.last(end - done)[: upto - done], RATE, self.pipeline.vad_energy_dbfs))
        frames = min((end - start) // VAD_FRAME, leg.vad.total)
        return float(np.mean(leg.vad.last(frames))) if frames else 0.0

    async def _run(self) -> None:
        while True:
            await self._score(await self._next_batch())  # no local keeps an answered batch (and its legs) alive

    async def _score(self, batch: list[_Window]) -> None:
        """Skip the windows past ``max_lag_s``, run the model on the others, answer every one."""
        now = time.monotonic()
        todo = []
        for w in batch:
            if w.leg.waiting is w:
                w.leg.waiting = None
            if now - w.due > self.cfg.max_lag_s:
                self._finish(w.leg, w.seq, w.start, w.end, None, "overload", w.due)
            else:
                todo.append(w)
        if not todo:
            return
        self._inflight = todo
        speech = [True] * len(todo)
        feats: list[np.ndarray | None] = [None] * len(todo)
        try:
            speech, probs, feats = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._gate_and_infer, todo)
        except Exception:  # a model failure must not stop scoring for every other call
            log.exception("scoring a batch of %d windows failed", len(todo))
            probs = [None] * len(todo)
        self._inflight = []
        metrics.BATCH_SIZE.observe(len(todo))
        for w, s, p, f in zip(todo, speech, probs, feats):
            skipped = "nonspeech" if not s else None if p is not None else "error"
            self._finish(w.leg, w.seq, w.start, w.end, p if s else None, skipped, w.due, f if s else None)

    async def _next_batch(self) -> list[_Window]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].queued + self.cfg.max_wait_ms / 1000
        while len(self._queue) < self.cfg.max_batch and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return [self._queue.popleft() for _ in range(min(self.cfg.max_batch, len(self._queue)))]

    def _gate_and_infer(self, batch: list[_Window]
                        ) -> tuple[list[bool], list[np.ndarray | None], list[np.ndarray | None]]:
        """Runs in the inference thread: which windows hold speech, and the model's probabilities and features
        (None for models without pooled features) for those."""
        speech = self._speech(batch) if self.gate is not None else [True] * len(batch)
        todo = [w for w, s in zip(batch, speech) if s]
        probs, feats = self._infer(todo) if todo else (np.zeros((0, 3), np.float32), [])
        it = iter(zip(probs, feats))
        scored = [next(it) if s else (None, None) for s in speech]
        return speech, [p for p, _ in scored], [f for _, f in scored]

    def _speech(self, batch: list[_Window]) -> list[bool]:
        """Gate each window on the speech share of its hops (each hop judged once, when it is the newest)."""
        shares = self.gate.shares(_stack_tails([w.tail for w in batch]))
        verdicts = []
        for w, share in zip(batch, shares):
            hops = w.leg.speech
            hops.append((w.end, float(share)))
            while hops and hops[0][0] <= w.start:
                hops.popleft()
            verdicts.append(float(np.mean([s for _, s in hops])) >= self.pipeline.speech_min_share)
        return verdicts

    def _infer(self, batch: list[_Window]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Runs in the inference thread: probabilities and features for each window, in batch order."""
        classifier, frontend, adapt = self.classifier, self.frontend, bool(self.adapters)  # a switch waits for the batch
        chunks = self.chunked
        if frontend is not None:
            return frontend.predict([(w.leg.cache, w.audio, w.audio_start) for w in batch]), [None] * len(batch)
        probs = np.zeros((len(batch), 3), dtype=np.float32)
        feats: list[np.ndarray | None] = [None] * len(batch)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(batch):
            by_length.setdefault(len(w.audio), []).append(i)
        whole = int(self.window * self.model_rate // RATE)
        if chunks is not None and whole in by_length:
            idx = by_length.pop(whole)
            pooled = chunks.features([(batch[i].leg.chunks, batch[i].audio, batch[i].audio_start) for i in idx])
            probs[idx] = classifier.predict_features(pooled, [batch[i].leg.leg_id for i in idx] if adapt else None)
            for i, row in zip(idx, pooled):
                feats[i] = row
        for idx in by_length.values():
            audio = np.stack([batch[i].audio for i in idx])
            legs = [batch[i].leg.leg_id for i in idx] if adapt else None
            probs[idx], f = _predict(classifier, audio, legs)
            if f is not None:
                for i, row in zip(idx, f):
                    feats[i] = row
        return probs, feats

    def _finish(self, leg: _Leg, seq: int, start: int, end: int, probs: np.ndarray | None,
                skipped: str | None, due: float, features: np.ndarray | None = None) -> None:
        """Record a window's result and deliver every result of the leg that is now in order."""
        metrics.WINDOWS.labels(skipped or "scored").inc()
        self.outcomes[skipped or "scored"] += 1
        leg.ready[seq] = (WindowResult(leg.leg_id, start / RATE, end / RATE, probs, skipped, 0.0, features), due)
        while leg.delivered in leg.ready:
            result, due = leg.ready.pop(leg.delivered)
            leg.delivered += 1
            result.latency_ms = (time.monotonic() - due) * 1000
            if result.skipped is None:
                metrics.SCORING_LAG.observe(result.latency_ms / 1000)
            try:
                leg.on_result(result)
            except Exception:  # one leg's failing consumer must not lose other legs' results
                log.exception("result handler of leg %s failed", leg.leg_id)
        if leg.delivered == leg.next_seq:
            leg.idle.set()


def _predict(classifier: Classifier | Cascade, audio: np.ndarray, legs: list[str] | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and pooled features of a batch; a stand-in with only ``predict`` (tests, scripted models)
    has no features."""
    if hasattr(classifier, "predict_with_features"):
        return classifier.predict_with_features(audio, legs)
    return (classifier.predict(audio) if legs is None else classifier.predict(audio, legs)), None


def _stack_tails(tails: list[np.ndarray]) -> np.ndarray:
    """Equal-length rows for the speech gate: shorter tails (a leg's first window) are zero-padded in front."""
    n = max(len(t) for t in tails)
    out = np.zeros((len(tails), n), np.int16)
    for row, t in zip(out, tails):
        row[n - len(t):] = t
    return out
