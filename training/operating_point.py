"""Operating point: shift one class's logit (folded into the output bias) to reach a recall target on
validation speakers. Escalation cares most about not missing NEGATIVE callers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel


def output_layer(model: PreTrainedModel) -> nn.Linear:
    """The last linear layer producing ``num_labels`` logits."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == model.config.num_labels]
    if not layers or layers[-1].bias is None:
        raise ValueError("model has no biased output layer")
    return layers[-1]


def recall_bias(logits: np.ndarray, y_true: np.ndarray, cls: int, target: float, max_shift: float = 5.0, step: float = 0.02) -> float:
    """Smallest non-negative logit shift for class ``cls`` that gives recall >= ``target`` (capped at ``max_shift``)."""
    mask = y_true == cls
    for shift in np.arange(0.0, max_shift + 1e-9, step):
        z = logits.copy()
        z[:, cls] += shift
        if (z[mask].argmax(axis=1) == cls).mean() >= target:
            return float(shift)
    return max_shift


def shift_output(model: PreTrainedModel, cls: int, shift: float) -> None:
    """Add ``shift`` to class ``cls``'s output bias (so the exported model carries the operating point)."""
    with torch.no_grad():
        output_layer(model).bias[cls] += shift
