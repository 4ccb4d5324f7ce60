"""ScoringEngine behaviour: windows, ordering, batching, back-pressure, VAD, short calls, bad input."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from emovoice_daemon.config import EngineConfig, PipelineConfig
from emovoice_daemon.outputs import metrics
from emovoice_daemon.scoring.engine import ScoringEngine, WindowResult
from emovoice_daemon.scoring.models.loader import Classifier
from emovoice_daemon.scoring.vad import voiced_ratio

from .conftest import FakeClassifier, ramp, tiny_hubert

CHUNK = 160  # 20 ms at 8 kHz, as sources deliver it


def sample_at(result: WindowResult, which: int) -> int:
    """The leg sample the fake classifier saw first (which=0) or last (which=2)."""
    return int(round(float(result.probs[which]) * 32768))


async def run_engine(clf, pipeline: PipelineConfig, cfg: EngineConfig, legs: dict[str, np.ndarray],
                     realtime: bool = False) -> dict[str, list[WindowResult]]:
    """Feed each leg's audio in 20 ms chunks (interleaved; paced in real time if asked), close, return results."""
    engine = ScoringEngine(clf, pipeline, cfg)
    await engine.start()
    results: dict[str, list[WindowResult]] = {leg: [] for leg in legs}
    for leg in legs:
        engine.open_leg(leg, results[leg].append)
    for i in range(0, max(len(a) for a in legs.values()), CHUNK):
        for leg, audio in legs.items():
            if i < len(audio):
                engine.push(leg, audio[i : i + CHUNK])
        await asyncio.sleep(CHUNK / 8000 if realtime else 0)
    await asyncio.gather(*(engine.close_leg(leg) for leg in legs))
    await engine.stop()
    return results


async def test_windows_are_due_every_hop_and_hold_the_right_audio(fake: FakeClassifier) -> None:
    pipe = PipelineConfig(window_s=0.5, hop_s=0.25, vad_min_voiced=0.2)
    results = (await run_engine(fake, pipe, EngineConfig(), {"c:mixed": ramp(16000)}))["c:mixed"]
    assert [(r.start_s, r.end_s) for r in results] == [(s / 4, s / 4 + 0.5) for s in range(7)]
    for r in results:
        assert r.skipped is None and r.leg_id == "c:mixed" and r.latency_ms >= 0
        assert sample_at(r, 0) == 1 + int(r.start_s * 8000)  # ramp value at the window's first sample
        assert sample_at(r, 2) == int(r.end_s * 8000)  # ... and at its last one


async def test_one_big_push_yields_every_window_in_order(fake: FakeClassifier) -> None:
    engine = ScoringEngine(fake, PipelineConfig(window_s=0.5, hop_s=0.25), EngineConfig())
    await engine.start()
    got: list[WindowResult] = []
    engine.open_leg("c:mixed", got.append)
    engine.push("c:mixed", ramp(16000))
    await engine.close_leg("c:mixed")
    await engine.stop()
    assert [r.end_s for r in got] == [0.5 + s / 4 for s in range(7)]
    assert all(r.skipped is None for r in got)


async def test_results_arrive_in_order_per_leg_under_a_jittery_model() -> None:
    class Jittery(FakeClassifier):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            self.delay_s = float(np.random.default_rng(len(self.batches)).uniform(0, 0.02))
            return super().predict(batch)

    legs = {f"call{i}:mixed": ramp(12000, offset=i * 7) for i in range(6)}
    results = await run_engine(Jittery(), PipelineConfig(window_s=0.5, hop_s=0.1), EngineConfig(max_batch=4), legs)
    for leg, got in results.items():
        assert [r.end_s for r in got] == pytest.approx([0.5 + 0.1 * k for k in range(11)])
        offset = int(leg[4:].split(":")[0]) * 7
        assert [sample_at(r, 0) for r in got] == [1 + offset + round(r.start_s * 8000) for r in got]


async def test_windows_from_many_legs_are_batched_in_a_worker_thread(fake: FakeClassifier) -> None:
    legs = {f"call{i}:mixed": ramp(8000, offset=i) for i in range(10)}
    await run_engine(fake, PipelineConfig(window_s=0.5, hop_s=0.25), EngineConfig(max_batch=4, max_wait_ms=50), legs)
    assert max(fake.batches) == 4 and all(1 <= b <= 4 for b in fake.batches)
    assert sum(fake.batches) == 10 * 3
    assert threading.main_thread().name not in fake.threads


async def test_slow_model_skips_windows_keeps_lag_bounded_and_starves_no_leg() -> None:
    slow = FakeClassifier(delay_s=0.15)
    pipe = PipelineConfig(window_s=0.5, hop_s=0.1)
    cfg = EngineConfig(max_batch=2, max_wait_ms=5, max_lag_s=0.5)
    before = metrics.WINDOWS.labels("overload")._value.get()
    legs = {f"call{i}:mixed": ramp(20000, offset=i) for i in range(8)}  # 2.5 s, 21 windows each, 8x too many
    results = await run_engine(slow, pipe, cfg, legs, realtime=True)
    for got in results.values():
        assert [r.end_s for r in got] == pytest.approx([0.5 + 0.1 * k for k in range(21)])  # each answered once, in order
        assert any(r.skipped is None for r in got), "a leg was starved"
        assert {r.skipped for r in got} <= {None, "overload"}
    scored = [r for got in results.values() for r in got if r.skipped is None]
    overloaded = sum(r.skipped == "overload" for got in results.values() for r in got)
    assert overloaded > len(scored)
    assert max(r.latency_ms for r in scored) < (cfg.max_lag_s + 2 * slow.delay_s + 0.3) * 1000
    assert metrics.WINDOWS.labels("overload")._value.get() - before == overloaded


async def test_silence_and_noise_are_skipped_without_the_model(fake: FakeClassifier) -> None:
    rng = np.random.default_rng(0)
    legs = {"quiet:mixed": np.zeros(8000, dtype=np.int16),
            "hiss:mixed": (rng.standard_normal(8000) * 3000).astype(np.int16)}
    results = await run_engine(fake, PipelineConfig(window_s=0.5, hop_s=0.25), EngineConfig(), legs)
    for got in results.values():
        assert len(got) == 3 and all(r.skipped == "silence" and r.probs is None for r in got)
    assert fake.batches == []


async def test_speech_gate_judges_each_window_as_voiced_ratio_does(fake: FakeClassifier) -> None:
    """Frames are judged once and reused by the overlapping windows: same decisions as the whole window's ratio."""
    rng = np.random.default_rng(3)
    t = np.arange(160) / 8000
    voiced = (np.sin(2 * np.pi * 180 * t) * 8000).astype(np.int16)
    audio = np.concatenate([voiced if rng.random() < 0.22 else np.zeros(160, np.int16) for _ in range(600)])
    pipe = PipelineConfig(window_s=0.5, hop_s=0.1, vad_min_voiced=0.2)
    results = (await run_engine(fake, pipe, EngineConfig(), {"c:mixed": audio}))["c:mixed"]
    expected = [voiced_ratio(audio[int(r.start_s * 8000):int(r.end_s * 8000)], 8000, pipe.vad_energy_dbfs) < 0.2
                for r in results]
    assert len(results) == 116 and 10 < sum(expected) < 106
    assert [r.skipped == "silence" for r in results] == expected


async def test_short_call_gets_one_partial_window_on_close(fake: FakeClassifier) -> None:
    legs = {"short:mixed": ramp(12000), "tiny:mixed": ramp(4000)}  # 1.5 s and 0.5 s, window 3 s
    results = await run_engine(fake, PipelineConfig(), EngineConfig(), legs)
    [only] = results["short:mixed"]
    assert (only.start_s, only.end_s, only.skipped) == (0.0, 1.5, None)
    assert sample_at(only, 0) == 1 and sample_at(only, 2) == 12000
    assert results["tiny:mixed"] == []


async def test_close_waits_for_windows_in_flight() -> None:
    engine = ScoringEngine(FakeClassifier(delay_s=0.2), PipelineConfig(), EngineConfig())
    await engine.start()
    got: list[WindowResult] = []
    engine.open_leg("c:mixed", got.append)
    engine.push("c:mixed", ramp(24000))
    await engine.close_leg("c:mixed")
    assert len(got) == 1 and got[0].skipped is None
    assert engine.live_legs == 0
    await engine.stop()


async def test_bad_input_gets_clear_errors(fake: FakeClassifier) -> None:
    engine = ScoringEngine(fake, PipelineConfig(), EngineConfig())
    engine.open_leg("c:mixed", lambda r: None)
    with pytest.raises(KeyError, match="not open"):
        engine.push("nope:mixed", ramp(160))
    with pytest.raises(ValueError, match="int16"):
        engine.push("c:mixed", np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError, match="already open"):
        engine.open_leg("c:mixed", lambda r: None)


async def test_model_failure_and_a_broken_consumer_do_not_stop_other_legs() -> None:
    clf = FakeClassifier(fail=True)
    engine = ScoringEngine(clf, PipelineConfig(window_s=0.5, hop_s=0.5), EngineConfig())
    await engine.start()
    good: list[WindowResult] = []

    def broken(result: WindowResult) -> None:
        raise RuntimeError("consumer bug")

    engine.open_leg("a:mixed", broken)
    engine.open_leg("b:mixed", good.append)
    engine.push("a:mixed", ramp(4000))
    engine.push("b:mixed", ramp(4000))
    await asyncio.gather(engine.close_leg("a:mixed"), asyncio.sleep(0.1))
    assert [r.skipped for r in good] == ["error"]
    clf.fail = False
    engine.push("b:mixed", ramp(4000, offset=4000))
    await engine.close_leg("b:mixed")
    await engine.stop()
    assert [r.skipped for r in good] == ["error", None]


async def test_per_leg_state_of_a_distilhubert_shaped_model_is_under_1_mb() -> None:
    from transformers import HubertConfig, HubertForSequenceClassification

    model = HubertForSequenceClassification(HubertConfig(num_hidden_layers=2, num_labels=3)).eval()
    clf = Classifier(name="distilhubert-shaped", trained=False, sampling_rate=16000, model=model,
                     class_of_label=np.arange(3))
    engine = ScoringEngine(clf, PipelineConfig(vad_min_voiced=0.0), EngineConfig())
    assert engine.frontend is not None
    await engine.start()
    engine.open_leg("c:mixed", lambda r: None)
    engine.push("c:mixed", ramp(5 * 8000))
    await asyncio.sleep(0)
    while engine._queue or engine.leg_bytes("c:mixed") < 512 * 149 * 4:
        await asyncio.sleep(0.05)
    assert engine.leg_bytes("c:mixed") <= 1_000_000
    await engine.close_leg("c:mixed")
    await engine.stop()


def test_streaming_is_used_only_for_conv_encoder_models(fake: FakeClassifier) -> None:
    hubert = Classifier(name="h", trained=False, sampling_rate=16000, model=tiny_hubert(num_labels=3),
                        class_of_label=np.arange(3))
    assert ScoringEngine(hubert, PipelineConfig(), EngineConfig()).frontend is not None
    assert ScoringEngine(hubert, PipelineConfig(), EngineConfig(streaming=False)).frontend is None
    assert ScoringEngine(fake, PipelineConfig(), EngineConfig()).frontend is None  # type: ignore[arg-type]
    on_grid, off_grid = PipelineConfig(hop_s=0.2), PipelineConfig(hop_s=0.25)  # 10 and 12.5 frames of 20 ms
    assert ScoringEngine(hubert, on_grid, EngineConfig()).frontend is not None
    assert ScoringEngine(hubert, off_grid, EngineConfig()).frontend is None


async def test_stop_answers_queued_and_in_flight_windows() -> None:
    engine = ScoringEngine(FakeClassifier(delay_s=0.3), PipelineConfig(window_s=0.5, hop_s=0.5),
                           EngineConfig(max_batch=1))
    await engine.start()
    got: list[WindowResult] = []
    for leg in ("a:mixed", "b:mixed", "c:mixed"):
        engine.open_leg(leg, got.append)
        engine.push(leg, ramp(4000))
    await asyncio.sleep(0.1)  # the first window is in the model, two are queued
    await engine.stop()
    assert len(got) == 3 and all(r.skipped == "overload" for r in got)
    await asyncio.wait_for(engine.close_leg("a:mixed"), 1.0)  # nothing left to wait for
