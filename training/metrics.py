"""Classification metrics for imbalanced 3-class emotion: UAR, macro-F1, per-class P/R, confusion, ECE."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(float((pred[sel] == y_true[sel]).mean()) - float(conf[sel].mean()))
    return float(ece)


def classification_report(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """UAR (mean recall), macro-F1, accuracy, per-class precision/recall/F1, confusion matrix and ECE."""
    y_true = np.asarray(y_true)
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(labels))
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(labels)), where=support > 0)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(len(labels)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(labels)), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "uar": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "ece": expected_calibration_error(probs, y_true),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(labels)
        },
        "confusion": cm.tolist(),
    }


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    """Save a row-normalised confusion matrix (with counts) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
