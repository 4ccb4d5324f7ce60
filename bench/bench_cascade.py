"""Cascade against the encoder on every window: accuracy and legs per core.

The compact CNN screens every window; the Whisper-encoder model scores a window only when the compact model's
NEGATIVE probability reaches ``--screen`` or on every ``N``th window (otherwise the compact verdict stands).
Accuracy is measured on the clips the encoder run scored (``runs/whisper/shipped_probs.npz``, written by
``emovoice-train run --config training/configs/whisper.yaml``: the fold-1 test actors of CREMA-D and the
cross-corpus sets, telephony condition); cost per window is ``compact + share x encoder`` CPU milliseconds
(from ``bench/bench_model_latency.py``), legs per core ``1000 / cost`` at the daemon's 1 s hop.

Usage: python bench/bench_cascade.py --encoder-ms 60 --compact-ms 4 [--probs runs/whisper/shipped_probs.npz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForAudioClassification

import emovoice_daemon.scoring.models  # noqa: F401  (registers the EmoVoice model types)
from training.calibration import softmax
from training.config import CorpusSpec, default_cache_dir
from training.corpora import CLASSES, NEGATIVE
from training.evaluate import condition_waves
from training.loop import predict_logits
from training.metrics import classification_report
from training.run import load

ROOT = Path(__file__).resolve().parents[1]
COMPACT = ROOT / "emovoice_daemon" / "scoring" / "models" / "default"
NEG = CLASSES.index(NEGATIVE)


def compact_probs(model_dir: Path, kind: str, path: str, indices: np.ndarray) -> np.ndarray:
    """The compact model's calibrated probabilities on the same clips, telephony condition."""
    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    data = load([CorpusSpec(kind, Path(path))], default_cache_dir())
    with torch.inference_mode():
        logits = predict_logits(model, condition_waves(data.store, indices, "telephony", 3.0))
    return softmax(logits, float(model.config.temperature))


def cascade(screen: np.ndarray, encoder: np.ndarray, threshold: float, every: int) -> tuple[np.ndarray, float]:
    """Scores and the share of windows the encoder ran on."""
    use = screen[:, NEG] >= threshold
    if every:
        use |= np.arange(len(screen)) % every == 0
    return np.where(use[:, None], encoder, screen), float(use.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probs", default=str(ROOT / "runs" / "whisper" / "shipped_probs.npz"))
    parser.add_argument("--compact", default=str(COMPACT))
    parser.add_argument("--encoder-ms", type=float, required=True, help="CPU ms per window of the encoder model")
    parser.add_argument("--compact-ms", type=float, required=True, help="CPU ms per window of the compact model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    saved = np.load(args.probs, allow_pickle=True)
    policies = [("compact only", 2.0, 0), ("encoder every window", 0.0, 1)]
    policies += [(f"screen P(NEG) >= {t:g}", t, 0) for t in (0.3, 0.5, 0.7)]
    policies += [(f"screen P(NEG) >= {t:g} or every {n}th", t, n) for t in (0.5,) for n in (3, 5)]
    print("| data (telephony) | policy | UAR | NEGATIVE recall | NEUTRAL recall | encoder share | CPU ms / window | legs per core |")
    print("|---|---|---|---|---|---|---|---|")
    for name in saved["names"]:
        kind, path, idx, labels, enc = (saved[f"{name}/{k}"] for k in ("kind", "path", "indices", "labels", "probs"))
        screen = compact_probs(Path(args.compact), str(kind), str(path), idx)
        for label, threshold, every in policies:
            probs, share = cascade(screen, enc, threshold, every)
            rep = classification_report(labels, probs, CLASSES)
            cost = args.compact_ms * (label != "encoder every window") + share * args.encoder_ms
            print(f"| {name} | {label} | {rep['uar']:.3f} | {rep['per_class'][NEGATIVE]['recall']:.3f} | "
                  f"{rep['per_class']['NEUTRAL']['recall']:.3f} | {share:.2f} | {cost:.1f} | {1000 / cost:.0f} |")


if __name__ == "__main__":
    main()
