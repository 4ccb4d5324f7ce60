"""Generic training loop for waveform classifiers (compact CNN, HuBERT): telephony augmentation on the fly,
class-weighted loss, gradient accumulation, fp16 on GPU, best-epoch selection on held-out speakers."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import PreTrainedModel

from emovoice_daemon.scoring.resample import resample
from training.augment import TELEPHONE_RATE, TelephonyAugment
from training.metrics import classification_report

Log = Callable[[str], None]


@dataclass
class TrainSettings:
    """Optimisation settings shared by the waveform model paths."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    crop_seconds: float = 3.0
    label_smoothing: float = 0.05
    mixup_alpha: float = 0.0
    ema_decay: float | None = None
    class_weight_power: float = 1.0
    grad_accum: int = 1
    fp16: bool = True
    warmup_fraction: float = 0.15
    eval_batch_size: int = 64


@dataclass
class TrainData:
    """Clean 8 kHz training clips (degraded on the fly) and validation clips already in the validation condition;
    ``train_labels`` are class indices, or a teacher's probabilities float[N, C] to distil."""

    train_waves: Sequence[np.ndarray]
    train_labels: np.ndarray
    val_waves: Sequence[np.ndarray]
    val_labels: np.ndarray


def model_rate(model: PreTrainedModel) -> int:
    """Input sampling rate of a model (stored in its config)."""
    return int(getattr(model.config, "sampling_rate", TELEPHONE_RATE))


def class_weights(labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
    """Inverse-frequency weights (``count ** -power``), normalised to mean 1 over classes."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.maximum(counts, 1.0) ** -power
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def input_normalized(model: PreTrainedModel) -> bool:
    """Whether the model expects zero-mean unit-variance input (``do_normalize`` of its preprocessor)."""
    return bool(getattr(model.config, "do_normalize", False))


def collate(waves: Sequence[np.ndarray], src_rate: int, dst_rate: int, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample (8 kHz line audio -> model rate, as the daemon does), optionally normalise each clip
    (as ``Wav2Vec2FeatureExtractor(do_normalize=True)``), zero-pad, and build the attention mask."""
    waves = [resample(w, src_rate, dst_rate) for w in waves]
    if normalize:
        waves = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) for w in waves]
    longest = max(len(w) for w in waves)
    x = np.zeros((len(waves), longest), dtype=np.float32)
    mask = np.zeros((len(waves), longest), dtype=np.int64)
    for i, w in enumerate(waves):
        x[i, : len(w)], mask[i, : len(w)] = w, 1
    return torch.from_numpy(x), torch.from_numpy(mask)


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def batched_outputs(model: PreTrainedModel, waves: Sequence[np.ndarray], width: int,
                    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int = 64,
                    src_rate: int = TELEPHONE_RATE) -> np.ndarray:
    """``output(input_values, attention_mask)`` (float[B, width]) for 8 kHz clips, batched by similar length."""
    model.eval()
    order = np.argsort([len(w) for w in waves])
    out = np.zeros((len(waves), width), dtype=np.float32)
    dev = _device(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x, mask = collate([waves[i] for i in idx], src_rate, model_rate(model), input_normalized(model))
        out[idx] = output(x.to(dev), mask.to(dev)).float().cpu().numpy()
    return out


def predict_logits(model: PreTrainedModel, waves: Sequence[np.ndarray], batch_size: int = 64, src_rate: int = TELEPHONE_RATE) -> np.ndarray:
    """Logits for 8 kHz clips, batched by similar length."""
    return batched_outputs(model, waves, model.config.num_labels,
                           lambda x, mask: model(input_values=x, attention_mask=mask).logits, batch_size, src_rate)


def _random_crop(x: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= samples:
        return x
    start = int(rng.integers(0, len(x) - samples + 1))
    return x[start : start + samples]


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length clips (less padding)."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 16
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def mixup(x: torch.Tensor, mask: torch.Tensor, alpha: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix each clip of a batch with a shuffled partner: ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta(alpha, alpha)
    (kept >= 0.5 so the first label dominates). Returns the mixed batch, the union mask, ``perm`` and ``lam``."""
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(len(x)))
    return lam * x + (1.0 - lam) * x[perm], torch.maximum(mask, mask[perm]), perm, lam


def fit(model: PreTrainedModel, data: TrainData, settings: TrainSettings, augment: TelephonyAugment, seed: int,
        log: Log = print) -> list[dict]:
    """Train in place; keeps the epoch with the best validation UAR (of the weights' EMA when
    ``settings.ema_decay`` is set). Returns per-epoch history."""
    train_waves, train_labels, val_waves, val_labels = data.train_waves, data.train_labels, data.val_waves, data.val_labels
    torch.manual_seed(seed)
    dev = _device(model)
    labels_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    hard = train_labels if train_labels.ndim == 1 else train_labels.argmax(1)
    weight = class_weights(hard, model.config.num_labels, settings.class_weight_power).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_waves) / settings.batch_size) / settings.grad_accum)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=settings.warmup_fraction
    )
    use_amp = settings.fp16 and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    crop = int(settings.crop_seconds * TELEPHONE_RATE)
    lengths = np.array([min(len(w), crop) for w in train_waves])
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True) if settings.ema_decay else None
    scored = ema.module if ema is not None else model
    best_uar, best_state, history = -1.0, None, []
    for epoch in range(settings.epochs):
        model.train()
        rng = np.random.default_rng([seed, epoch])
        total, n_seen = 0.0, 0
        batches = _batches(lengths, settings.batch_size, rng)
        for step, idx in enumerate(batches):
            waves = []
            for i in idx:
                clip_rng = np.random.default_rng([seed, epoch, int(i)])
                waves.append(augment(_random_crop(train_waves[i], crop, clip_rng), TELEPHONE_RATE, clip_rng))
            x, mask = collate(waves, TELEPHONE_RATE, model_rate(model), input_normalized(model))
            y = torch.as_tensor(train_labels[idx], device=dev)
            targets = [(1.0, y)]
            if settings.mixup_alpha > 0:
                x, mask, perm, lam = mixup(x, mask, settings.mixup_alpha, rng)
                targets = [(lam, y), (1.0 - lam, y[perm.to(dev)])]
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                logits = model(input_values=x.to(dev), attention_mask=mask.to(dev)).logits
            loss = sum(share * torch.nn.functional.cross_entropy(logits.float(), target, weight=weight, label_smoothing=settings.label_smoothing)
                       for share, target in targets)
            scaler.scale(loss / settings.grad_accum).backward()
            if (step + 1) % settings.grad_accum == 0 or step + 1 == len(batches):
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if sched.last_epoch + 1 < sched.total_steps:
                    sched.step()
                if ema is not None:
                    ema.update_parameters(model)
            total += loss.item() * len(idx)
            n_seen += len(idx)
        val = classification_report(val_labels, predict_logits(scored, val_waves, settings.eval_batch_size), labels_names)
        history.append({"epoch": epoch + 1, "train_loss": total / n_seen, "val_uar": val["uar"], "val_macro_f1": val["macro_f1"]})
        log(f"epoch {epoch + 1}/{settings.epochs} loss {total / n_seen:.4f} val UAR {val['uar']:.4f} macro-F1 {val['macro_f1']:.4f}")
        if val["uar"] >= best_uar:
            best_uar, best_state = val["uar"], copy.deepcopy(scored.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def train_end_to_end(build: Callable[[dict], PreTrainedModel], options: dict, data: TrainData, settings: TrainSettings,
                     augment: TelephonyAugment, seed: int, log: Log = print) -> tuple[PreTrainedModel, list[dict]]:
    """Seeded ``build(options)``, then :func:`fit` on the GPU when there is one; returns the model on the CPU."""
    torch.manual_seed(seed)
    model = build(options).to("cuda" if torch.cuda.is_available() else "cpu")
    history = fit(model, data, settings, augment, seed, log)
    return model.cpu(), history
