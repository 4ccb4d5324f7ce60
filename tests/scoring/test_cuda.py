"""The CUDA fp16 batched path of the chunked encoder model (runs where a CUDA device is present, skips elsewhere)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from emovoice_daemon.config import EngineConfig, ModelConfig, PipelineConfig
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.scoring.models.loader import load_classifier
from tests.scoring.test_chunked import voiced
from tests.scoring.test_whisper import tiny_encoder_dir, tiny_head_dir

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


async def scores(clf, audio: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # noqa: ANN001
    engine = ScoringEngine(clf, PipelineConfig(window_s=1.5, hop_s=0.5, speech_gate=False), EngineConfig())
    await engine.start()
    out: dict[str, list] = {leg: [] for leg in audio}
    for leg, pcm in audio.items():
        engine.open_leg(leg, out[leg].append)
        engine.push(leg, pcm)
    await asyncio.gather(*(engine.close_leg(leg) for leg in audio))
    await engine.stop()
    return {leg: np.stack([r.probs for r in rs]) for leg, rs in out.items()}


async def test_chunked_model_scores_on_cuda_in_fp16_as_on_the_cpu(tmp_path: Path) -> None:
    head = tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc"))
    gpu = load_classifier(ModelConfig(path=str(head), device="cuda", adapt=False))
    cpu = load_classifier(ModelConfig(path=str(head), device="cpu", adapt=False))
    for clf in (gpu, cpu):
        clf.model.config.chunk_s = 0.5
    assert gpu.half and next(gpu.model.parameters()).is_cuda
    audio = {f"leg{i}": voiced(4.0, i) for i in range(8)}
    on_gpu, on_cpu = await scores(gpu, audio), await scores(cpu, audio)
    for leg in audio:
        assert on_gpu[leg].shape == (6, 3)
        np.testing.assert_allclose(on_gpu[leg], on_cpu[leg], atol=0.03)
