"""Batch QA throughput: audio hours scored per wall-clock hour by ``emovoice-daemon score``.

Writes ``--calls`` recorded calls of ``--minutes`` each to a temporary directory (every other
one stereo: customer and agent on separate channels, so it counts twice the legs), built from
real speech (the shared captures and CREMA-D clips when ``../shared`` is present, else
espeak-ng or a synthetic vowel train; see ``bench_engine.speech``), then scores them with the
default engine, policy and model (or ``--model DIR``) exactly as the CLI does, and prints the
throughput and where the time went.

    .venv/bin/python -m bench.bench_batch              # about 1 min on 2 cores
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.bench_engine import speech
from emovoice_daemon.config import Config, ModelConfig
from emovoice_daemon.scoring.models.loader import load_classifier
from emovoice_daemon.tools.batch import score_files

RATE = 8000


def call_audio(loops: list[np.ndarray], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of int16 speech: the loops tiled from a random start."""
    source = np.concatenate(loops)
    start = int(rng.integers(len(source)))
    reps = int(np.ceil((start + seconds * RATE) / len(source)))
    return np.tile(source, reps)[start:start + int(seconds * RATE)]


def write_calls(directory: Path, n: int, minutes: float) -> float:
    """Write ``n`` calls (odd-numbered ones stereo) and return their total audio seconds."""
    loops, rng = speech(), np.random.default_rng(0)
    for i in range(n):
        legs = [call_audio(loops, minutes * 60, rng) for _ in range(1 + i % 2)]
        sf.write(directory / f"call{i:03d}.wav", np.stack(legs, axis=1), RATE, subtype="PCM_16")
    return n * minutes * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=8, help="calls scored at once (the CLI's --jobs)")
    parser.add_argument("--model", default="", help="model directory (default: the shipped default)")
    args = parser.parse_args()
    config = Config(model=ModelConfig(path=args.model, site_stats_path=""))  # in memory: never the live site's
    classifier = load_classifier(config.model)
    with tempfile.TemporaryDirectory() as tmp:
        calls, out = Path(tmp) / "calls", Path(tmp) / "qa"
        calls.mkdir()
        audio_s = write_calls(calls, args.calls, args.minutes)
        summary = asyncio.run(score_files([calls], out, config, classifier, jobs=args.jobs, progress=False))
    print(f"device {classifier.device}, {torch.get_num_threads()} threads; {summary['files']} calls "
          f"({args.calls // 2} stereo), {audio_s / 3600:.3f} h of audio, {summary['failed']} failed")
    print(f"wall {summary['wall_s']} s: {summary['throughput_audio_h_per_wall_h']} audio hours per wall-clock hour")


if __name__ == "__main__":
    main()
