"""CPU per window of the speech gate, against the models' own cost measured in the same run.

Usage: .venv/bin/python -m bench.bench_speech_gate [--batch 1 8 32] [--repeats N]

The gate runs silero-vad on each window's newest hop plus its warm-up (1.25 s at 8 kHz), a batch of legs at a time,
as the engine does, unrolled (the daemon's way) and step by step (one TorchScript call per 32 ms chunk, as before
issue #25); the models run on the whole 3 s window. Whole-process CPU (``time.process_time``), one thread.
Prints milliseconds per window and the gate's cost as a share of each model's.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import AutoModelForAudioClassification

import emovoice_daemon.scoring.models  # noqa: F401  (registers the EmoVoice model types)
from emovoice_daemon.scoring.models.loader import COMPACT_DIR, ENCODER_DIR
from emovoice_daemon.scoring.speech import RATE, WARM_S, SpeechGate


def cpu_ms(fn, repeats: int) -> float:  # noqa: ANN001
    """Median process CPU milliseconds of ``fn()`` (after two warm-up calls)."""
    fn(), fn()
    samples = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        samples.append((time.process_time() - c0) * 1000)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gate = SpeechGate.load()
    if gate is None:
        raise SystemExit("bench_speech_gate: the silero-vad package is not installed")
    models = {}
    for name, path in (("compact", COMPACT_DIR), ("encoder", ENCODER_DIR)):
        try:
            models[name] = AutoModelForAudioClassification.from_pretrained(str(path)).eval()
        except (OSError, ValueError) as exc:
            print(f"{name}: not measured ({str(exc).splitlines()[0]})")
    rng = np.random.default_rng(0)
    print("batch | gate step by step ms/window | gate ms/window | " + " | ".join(f"{n} ms/window | gate / {n}" for n in models))
    unrolled = gate.unrolled
    for batch in args.batch:
        tail = rng.integers(-3000, 3000, (batch, RATE + int(WARM_S * RATE)), dtype=np.int16)
        gate.unrolled = None
        step_ms = cpu_ms(lambda: gate.shares(tail), args.repeats) / batch
        gate.unrolled = unrolled
        gate_ms = cpu_ms(lambda: gate.shares(tail), args.repeats) / batch
        cells = []
        for name, model in models.items():
            rate = model.config.sampling_rate if hasattr(model.config, "sampling_rate") else 16000
            x = torch.from_numpy(rng.uniform(-0.3, 0.3, (batch, 3 * rate)).astype(np.float32))
            with torch.inference_mode():
                ms = cpu_ms(lambda: model(input_values=x), args.repeats) / batch
            cells.append(f"{ms:.2f} | {gate_ms / ms:.0%}")
        print(f"{batch} | {step_ms:.2f} | {gate_ms:.2f} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
