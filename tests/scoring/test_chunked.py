"""Chunked Whisper-encoder models: windows pooled exactly from their chunks, each hop of a leg encoded once."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch
from tests.scoring.test_whisper import tiny_encoder_dir, tiny_head_dir

from emovoice_daemon.config import EngineConfig, ModelConfig, PipelineConfig
from emovoice_daemon.scoring import chunked
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.scoring.models.loader import load_classifier
from emovoice_daemon.scoring.models.whisper import chunk_bounds, encoder_states, pooled_states


def chunked_head(tmp_path: Path, chunk_s: float, adapt: bool = False):  # noqa: ANN201 (Classifier)
    clf = load_classifier(ModelConfig(path=str(tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc"))),
                                      adapt=adapt, site_stats_path=""))
    clf.model.config.chunk_s = chunk_s
    return clf


def test_window_features_pool_exactly_over_its_chunks(tmp_path: Path) -> None:
    model = chunked_head(tmp_path, 0.5).model
    x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((2, 20000))).astype(np.float32))
    with torch.inference_mode():
        got = model.pooled_features(x)
        states = [encoder_states(model.encoder, model.mel(x[:, a:b]), 1) for a, b in chunk_bounds(20000, 8000)]
        concatenated = pooled_states([torch.cat([s[i] for s in states], dim=1) for i in model.config.layers]).flatten(1)
    assert chunk_bounds(20000, 8000) == [(0, 8000), (8000, 16000), (16000, 20000)]
    torch.testing.assert_close(got, concatenated, atol=1e-5, rtol=1e-5)
    model.config.chunk_s = 0.0  # the whole window at once is another feature
    with torch.inference_mode():
        assert not torch.allclose(model.pooled_features(x), got, atol=1e-3)


def voiced(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    return (sum(np.sin(2 * np.pi * k * rng.uniform(120, 220) * t) / k for k in range(1, 8)) * 6000).astype(np.int16)


async def test_engine_encodes_each_hop_once_and_scores_as_the_whole_window(tmp_path: Path) -> None:
    clf = chunked_head(tmp_path, 0.5)
    engine = ScoringEngine(clf, PipelineConfig(window_s=1.5, hop_s=0.5, speech_gate=False), EngineConfig())
    assert engine.chunked is not None
    await engine.start()
    results: dict[str, list] = {"a": [], "b": []}
    audio = {leg: voiced(4.0, i) for i, leg in enumerate(results)}
    for leg in results:
        engine.open_leg(leg, results[leg].append)
    caches = {leg: engine._legs[leg].chunks for leg in results}
    for offset in range(0, 32000, 800):  # 0.1 s at a time, both legs
        for leg in results:
            engine.push(leg, audio[leg][offset:offset + 800])
        await asyncio.sleep(0.002)
    await asyncio.gather(*(engine.close_leg(leg) for leg in results))
    await engine.stop()
    assert {leg: c.computed for leg, c in caches.items()} == {"a": 8, "b": 8}  # 4 s in 0.5 s hops: 8 chunks encoded, not 6 windows x 3
    engine_whole = ScoringEngine(clf, PipelineConfig(window_s=1.5, hop_s=0.5, speech_gate=False), EngineConfig())
    engine_whole.chunked = None  # every window through the model's own pooled_features
    await engine_whole.start()
    again: list = []
    engine_whole.open_leg("a", again.append)
    engine_whole.push("a", audio["a"])
    await engine_whole.close_leg("a")
    await engine_whole.stop()
    assert len(results["a"]) == len(again) == 6
    np.testing.assert_allclose(np.stack([r.probs for r in results["a"]]), np.stack([r.probs for r in again]), atol=1e-5)
    # WindowResult.features keeps its meaning: the window's unnormalised pooled head input
    np.testing.assert_allclose(np.stack([r.features for r in results["a"]]), np.stack([r.features for r in again]),
                               rtol=1e-4, atol=1e-5)


async def test_a_switched_model_encodes_the_legs_chunks_afresh(tmp_path: Path) -> None:
    clf = chunked_head(tmp_path, 0.5)
    engine = ScoringEngine(clf, PipelineConfig(window_s=1.5, hop_s=0.5, speech_gate=False), EngineConfig())
    await engine.start()
    got: list = []
    engine.open_leg("a", got.append)
    cache = engine._legs["a"].chunks
    audio = voiced(3.0, 0)
    engine.push("a", audio[:16000])  # windows ending at 1.5 and 2.0 s: 4 chunks
    while len(got) < 2:
        await asyncio.sleep(0.01)
    other = chunked_head(tmp_path / "other", 0.5)
    engine.set_classifier(other)
    engine.push("a", audio[16000:20000])  # the window ending at 2.5 s, scored by the new model from its own chunks
    await engine.close_leg("a")
    await engine.stop()
    assert cache.computed == 4 + 3 and cache.owner is engine.chunked


def test_a_hop_that_is_not_the_chunk_encodes_whole_windows(tmp_path: Path) -> None:
    clf = chunked_head(tmp_path, 0.5)
    assert chunked.supports(clf)
    assert ScoringEngine(clf, PipelineConfig(window_s=1.5, hop_s=0.25, speech_gate=False), EngineConfig()).chunked is None
    clf.model.config.chunk_s = 0.0
    assert not chunked.supports(clf)
