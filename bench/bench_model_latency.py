"""Milliseconds per 3 s window for an exported model on this CPU, single-thread and multi-thread.

Usage: python bench/bench_model_latency.py [model_dir] [--repeats N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForAudioClassification

import emovoice_daemon.scoring.models  # noqa: F401  (registers the EmoVoice model types)

DEFAULT = Path(__file__).resolve().parents[1] / "emovoice_daemon" / "models" / "default"


def time_window(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median and 95th-percentile milliseconds of one forward pass."""
    with torch.inference_mode():
        for _ in range(10):
            model(input_values=x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_values=x)
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    config = AutoConfig.from_pretrained(args.model)
    model = AutoModelForAudioClassification.from_pretrained(args.model).eval()
    size = sum(p.stat().st_size for p in Path(args.model).iterdir()) / 2**20
    params = sum(p.numel() for p in model.parameters())
    x = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, int(args.seconds * config.sampling_rate)).astype(np.float32))[None]
    print(f"model {args.model}: {config.model_type}, {params:,} parameters, {size:.2f} MiB on disk")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        median, p95 = time_window(model, x, args.repeats)
        print(f"{threads} thread(s): {median:.2f} ms median, {p95:.2f} ms p95 per {args.seconds:g} s window")


if __name__ == "__main__":
    main()
