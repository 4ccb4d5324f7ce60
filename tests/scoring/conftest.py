"""Engine test helpers: a scripted fake classifier, tiny HF model directories, real speech."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import HubertConfig, HubertForSequenceClassification, Wav2Vec2FeatureExtractor

from emovoice_daemon.scoring.resample import resample
from emovoice_daemon.tools.demo import bundled_calls

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


class FakeClassifier:
    """Duck-typed Classifier at 8 kHz: probs = (first sample, 0, last sample) of each window.

    That lets a test tell which audio a result was computed from. Records batch sizes;
    ``delay_s`` makes it slow, ``fail`` makes it raise.
    """

    name, trained, labels, model, normalize_input = "fake", False, ("NEGATIVE", "NEUTRAL", "POSITIVE"), None, False
    escalation: dict = {}

    def __init__(self, sampling_rate: int = 8000, delay_s: float = 0.0, fail: bool = False) -> None:
        self.sampling_rate, self.delay_s, self.fail = sampling_rate, delay_s, fail
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return np.stack([batch[:, 0], np.zeros(len(batch)), batch[:, -1]], axis=1).astype(np.float32)


@pytest.fixture
def fake() -> FakeClassifier:
    return FakeClassifier()


def ramp(n: int, offset: int = 0) -> np.ndarray:
    """int16 audio whose value at sample i is 1 + (i mod 30000): identifies every sample of a 3.75 s leg."""
    return (1 + (np.arange(offset, offset + n) % 30000)).astype(np.int16)


def tiny_hubert(conv: int = 64, hidden: int = 64, seed: int = 0, **kw: object) -> HubertForSequenceClassification:
    """A small random HuBERT with the real front-end geometry (GroupNorm first layer, 20 ms frames)."""
    torch.manual_seed(seed)
    cfg = HubertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden,
                       conv_dim=(conv,) * 7, num_conv_pos_embedding_groups=8, classifier_proj_size=32, **kw)
    return HubertForSequenceClassification(cfg).eval()


def save_model_dir(path: Path, labels: list[str], rate: int = 16000, temperature: float | None = None,
                   **prep: object) -> Path:
    """Write a tiny HuBERT audio-classification directory with the given output labels."""
    model = tiny_hubert(num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={k: i for i, k in enumerate(labels)})
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=rate, **prep).save_pretrained(path)
    if temperature is not None:
        cfg = json.loads((path / "config.json").read_text())
        cfg["temperature"] = temperature
        (path / "config.json").write_text(json.dumps(cfg))
    return path


def read_8k(path: Path) -> np.ndarray:
    pcm, rate = sf.read(path, dtype="int16")
    return pcm if rate == 8000 else resample(pcm, rate, 8000).clip(-32768, 32767).astype(np.int16)


def real_speech(fallback: bool = True) -> list[tuple[str, np.ndarray]]:
    """(name, 8 kHz int16) for the shared recordings: the Asterisk source and 24 CREMA-D clips joined per actor;
    without ../shared (and ``fallback``), the demo's two calls (CREMA-D clips bundled in the package)."""
    out = []
    source = SHARED / "asterisk" / "source_speech_8k.wav"
    if source.exists():
        out.append(("asterisk source_speech_8k", read_8k(source)))
    cremad = SHARED / "data" / "cremad" / "AudioWAV"
    for actor in ("1001", "1030", "1052", "1079"):
        clips = sorted(cremad.glob(f"{actor}_*.flac"))[:6]
        if clips:
            out.append((f"cremad actor {actor}", np.concatenate([read_8k(c) for c in clips])))
    return out or ([(f"demo call {c.name}", c.audio) for c in bundled_calls()] if fallback else [])


