"""Speaker-independent evaluation under stated test conditions, fold aggregation and the metrics table."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from training.audio import AudioStore, center_window
from training.augment import CONDITION_TEXT, TELEPHONE_RATE, eval_condition
from training.calibration import softmax
from training.corpora import CLASSES, NEGATIVE, NEUTRAL
from training.loop import predict_logits
from training.metrics import classification_report, plot_confusion


def condition_waves(store: AudioStore, indices: Sequence[int], condition: str, window_seconds: float) -> list[np.ndarray]:
    """Clips degraded by ``condition`` (noise seeded by clip index), then cut to the daemon's window."""
    window = int(window_seconds * TELEPHONE_RATE)
    return [center_window(eval_condition(store[i], TELEPHONE_RATE, condition, seed=int(i)), window) for i in indices]


def evaluate(
    model: PreTrainedModel,
    store: AudioStore,
    labels: np.ndarray,
    indices: Sequence[int],
    temperature: float,
    conditions: Sequence[str],
    window_seconds: float,
) -> dict:
    """Per condition: reports with raw softmax (T=1) and with the fitted temperature."""
    indices = np.asarray(indices)
    out = {}
    for cond in conditions:
        logits = predict_logits(model, condition_waves(store, indices, cond, window_seconds))
        out[cond] = {
            "raw": classification_report(labels[indices], softmax(logits), CLASSES),
            "calibrated": classification_report(labels[indices], softmax(logits, temperature), CLASSES),
        }
    return out


def headline(report: dict) -> dict[str, float]:
    """The numbers the acceptance criteria are about."""
    per_class = report["calibrated"]["per_class"]
    return {
        "uar": report["calibrated"]["uar"],
        "negative_recall": per_class[NEGATIVE]["recall"],
        "negative_precision": per_class[NEGATIVE]["precision"],
        "neutral_recall": per_class[NEUTRAL]["recall"],
        "macro_f1": report["calibrated"]["macro_f1"],
        "ece_raw": report["raw"]["ece"],
        "ece_calibrated": report["calibrated"]["ece"],
    }


def summarize_folds(fold_evals: Sequence[dict]) -> dict:
    """Mean and std over folds of the headline numbers, plus the pooled confusion matrix, per condition."""
    summary = {}
    for cond in fold_evals[0]:
        rows = [headline(f[cond]) for f in fold_evals]
        summary[cond] = {
            key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))} for key in rows[0]
        }
        summary[cond]["confusion"] = np.sum([f[cond]["calibrated"]["confusion"] for f in fold_evals], axis=0).tolist()
    return summary


def _cell(v: dict | float) -> str:
    return f"{v['mean']:.3f} ± {v['std']:.3f}" if isinstance(v, dict) else f"{v:.3f}"


COLUMN = {"uar": "UAR", "negative_recall": "NEGATIVE recall", "negative_precision": "NEGATIVE precision",
          "neutral_recall": "NEUTRAL recall", "macro_f1": "macro-F1", "ece_raw": "ECE (T=1)", "ece_calibrated": "ECE (T fitted)"}


def metrics_table(rows: Sequence[tuple[str, str, dict]],
                  keys: Sequence[str] = ("uar", "negative_recall", "macro_f1", "ece_raw", "ece_calibrated")) -> str:
    """Markdown table; each row is (data, condition, headline-like dict of floats or mean/std dicts)."""
    lines = ["| data | condition | " + " | ".join(COLUMN[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines += [f"| {data} | {cond} | " + " | ".join(_cell(vals[k]) for k in keys) + " |" for data, cond, vals in rows]
    conds = sorted({c for _, c, _ in rows})
    return "\n".join(lines) + "\n\n" + "\n".join(f"- *{c}*: {CONDITION_TEXT[c]}" for c in conds if c in CONDITION_TEXT)


def fold_table(records: Sequence[dict]) -> str:
    """Markdown table, one row per speaker fold: temperature, UAR and recalls per condition, test-corpus UAR."""
    train_name, tests = next(iter(records[0]["train"])), list(records[0]["tests"])
    conds = list(records[0]["train"][train_name])
    head = ["fold", "test speakers", "T"]
    for c in conds:
        head += [f"{c} UAR"] + [f"{c} {name[:3]} rec" for name in CLASSES]
    head += [f"{t} {c} UAR" for t in tests for c in conds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(records, key=lambda r: r["fold"]):
        cells = [str(r["fold"] + 1), str(len(r["test_speakers"])), f"{r['temperature']:.2f}"]
        for c in conds:
            rep = r["train"][train_name][c]["calibrated"]
            cells += [f"{rep['uar']:.3f}"] + [f"{rep['per_class'][name]['recall']:.3f}" for name in CLASSES]
        cells += [f"{r['tests'][t][c]['calibrated']['uar']:.3f}" for t in tests for c in conds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_confusions(confusions: dict[str, list], out_dir: Path) -> None:
    """One PNG per named confusion matrix."""
    for name, cm in confusions.items():
        plot_confusion(np.asarray(cm), CLASSES, out_dir / f"confusion_{name}.png", name.replace("_", " "))
