"""Milliseconds per 3 s window for an exported model on this CPU: 1 and 2 threads, optionally batched and int8.

Usage: .venv/bin/python -m bench.bench_model_latency [model_dir] [--repeats N] [--batch B] [--int8]

Besides wall-clock time it prints the whole process's CPU time per window (``time.process_time``: every
thread, torch's intra-op workers included), the cost that decides legs per core; on a machine other jobs
share, wall time overstates it. The calling thread's CPU alone understates it as soon as torch uses more
than one thread.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForAudioClassification

import emovoice_daemon.scoring.models  # noqa: F401  (registers the EmoVoice model types)
from emovoice_daemon.scoring.models.loader import quantize_linear

DEFAULT = Path(__file__).resolve().parents[1] / "emovoice_daemon" / "scoring" / "models" / "default"


def time_window(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median and 95th-percentile wall milliseconds and median process CPU milliseconds of one forward pass."""
    with torch.inference_mode():
        for _ in range(5):
            model(input_values=x)
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            model(input_values=x)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
    return float(np.median(wall)), float(np.percentile(wall, 95)), float(np.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass (the engine batches legs)")
    parser.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the linear layers")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    config = AutoConfig.from_pretrained(args.model)
    model = AutoModelForAudioClassification.from_pretrained(args.model).eval()
    size = sum(p.stat().st_size for p in Path(args.model).iterdir()) / 2**20
    params = sum(p.numel() for p in model.parameters())
    if args.int8:
        model = quantize_linear(model)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-0.3, 0.3, (args.batch, int(args.seconds * config.sampling_rate))).astype(np.float32))
    print(f"model {args.model}: {config.model_type}, {params:,} parameters run, {size:.2f} MiB on disk"
          f"{', int8' if args.int8 else ''}, batch {args.batch}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        median, p95, cpu = time_window(model, x, args.repeats)
        print(f"{threads} thread(s): {median / args.batch:.2f} ms median, {p95 / args.batch:.2f} ms p95 wall, "
              f"{cpu / args.batch:.2f} ms CPU (whole process) per {args.seconds:g} s window")


if __name__ == "__main__":
    main()
