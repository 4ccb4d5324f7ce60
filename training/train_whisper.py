"""Whisper-encoder emotion model: cached encoder features, speaker folds, cross-corpus tables, adaptation, export.

The encoder is frozen and the head sees only per-layer time-pooled hidden states, so every clip is encoded
once per condition and cached (``cache_dir``): the test conditions (clean, telephony) and, when training uses
them, telephony-augmented copies (``augN``). Heads train in seconds on the cache.

Features are standardised as the daemon does it (:mod:`emovoice_daemon.scoring.adaptation`): by the
statistics of the *site* (here: one corpus under one condition - what the daemon learns from the traffic it
hears, no labels involved), blended with the *leg*'s own mean (here: other clips of the same speaker) as the
leg's history grows.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emovoice_daemon.scoring.adaptation import leg_weight
from emovoice_daemon.scoring.models.whisper import (
    EmoVoiceWhisperConfig,
    EmoVoiceWhisperForAudioClassification,
    LogMel,
    resolve_encoder,
    window_features,
)
from emovoice_daemon.scoring.resample import resample
from training.audio import center_window
from training.augment import TELEPHONE_RATE, TelephonyAugment
from training.calibration import fit_temperature, softmax
from training.corpora import CLASSES, NEGATIVE
from training.loop import Log, TrainSettings, class_weights
from training.metrics import classification_report
from training.operating_point import recall_bias

WINDOW_CLIP_S = 3.0  # a cached clip stands for one daemon window; leg history is counted in 1 s hops


@dataclass(frozen=True)
class HeadOptions:
    """The ``model:`` section of a whisper run config."""

    encoder: str = "whisper-base"
    encoder_layers: int = 4  # blocks cached (and run in the daemon at most)
    layers: tuple[int, ...] = (2, 3)
    head_hidden: int = 0
    train_conditions: tuple[str, ...] = ("clean", "aug1")  # cached conditions the head trains on (augN: augmentation copy N)
    in_corpus_conditions: tuple[str, ...] = ("clean", "telephony")
    leg_prior: float = 20.0
    leg_cap: float = 0.5
    history_s: float = 30.0  # leg history behind the headline numbers
    chunk_s: float = 0.0  # > 0: each clip encoded in chunks this long, pooled over them (the daemon's hop: 1.0)

    @classmethod
    def from_dict(cls, d: dict) -> HeadOptions:
        d = dict(d)
        for key in ("layers", "train_conditions", "in_corpus_conditions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def load_encoder(name: str, layers: int) -> nn.Module:
    """The first ``layers`` blocks of a local Whisper checkpoint's encoder, float32, frozen."""
    from transformers import WhisperModel

    encoder = WhisperModel.from_pretrained(str(resolve_encoder(name)), dtype=torch.float32).encoder.eval()
    encoder.layers = encoder.layers[:layers]
    return encoder.requires_grad_(False)


@torch.inference_mode()
def encode(encoder: nn.Module, waves: Sequence[np.ndarray], log: Log, what: str, chunk_s: float = 0.0) -> np.ndarray:
    """Pooled hidden states of 8 kHz clips, float16[N, layers + 1, 2, d_model] (one clip at a time; encoded whole,
    or in ``chunk_s`` chunks as the daemon's chunked model does)."""
    mel = LogMel(encoder.config.num_mel_bins)
    layers = len(encoder.layers)
    out = np.zeros((len(waves), layers + 1, 2, encoder.config.d_model), np.float16)
    for i, w in enumerate(waves):
        x = torch.from_numpy(resample(np.asarray(w, np.float32), TELEPHONE_RATE, 16000))[None]
        out[i] = window_features(encoder, mel, x, layers, range(layers + 1), int(round(chunk_s * 16000)))[0].numpy()
        if i % 1000 == 999:
            log(f"{what}: {i + 1}/{len(waves)} clips encoded")
    return out


def cache_key(paths: Sequence[Path], opts: HeadOptions, condition: str) -> str:
    files = hashlib.sha1("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:12]
    chunked = f"-C{opts.chunk_s:g}" if opts.chunk_s else ""
    return f"whisper-{Path(opts.encoder).name}-L{opts.encoder_layers}{chunked}-{files}-{condition}.npz"


def condition_wave(x: np.ndarray, i: int, condition: str, augment: TelephonyAugment, seed: int) -> np.ndarray:
    """One clip in a test condition (``clean``/``telephony``, as :mod:`training.evaluate`) or ``augN``
    (training augmentation copy N), cut to the daemon's 3 s window."""
    from training.augment import eval_condition

    if condition.startswith("aug"):
        y = augment(x, TELEPHONE_RATE, np.random.default_rng([seed, int(condition[3:]), i]))
    else:
        y = eval_condition(x, TELEPHONE_RATE, condition, seed=i)
    return center_window(y, int(WINDOW_CLIP_S * TELEPHONE_RATE))


class FeatureCache:
    """Encoded clips per (corpus, condition), computed once and kept as ``.npz`` in ``cache_dir``."""

    def __init__(self, opts: HeadOptions, cache_dir: Path, augment: TelephonyAugment, seed: int, log: Log) -> None:
        self.opts, self.dir, self.augment, self.seed, self.log = opts, Path(cache_dir), augment, seed, log
        self._encoder: nn.Module | None = None

    def get(self, corpus, condition: str) -> np.ndarray:  # noqa: ANN001 (training.run.Corpus; avoids an import cycle)
        paths = [u.path for u in corpus.utts]
        file = self.dir / cache_key(paths, self.opts, condition)
        if file.is_file():
            with np.load(file) as z:
                return z["feats"]
        if self._encoder is None:
            self._encoder = load_encoder(self.opts.encoder, self.opts.encoder_layers)
        self.log(f"encoding {corpus.name} ({condition}): {len(paths)} clips")
        waves = (condition_wave(corpus.store[i], i, condition, self.augment, self.seed) for i in range(len(paths)))
        feats = encode(self._encoder, list(waves), self.log, f"{corpus.name} {condition}", self.opts.chunk_s)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez(tmp, feats=feats, paths=np.array([str(p) for p in paths]))
        tmp.replace(file)
        return feats


def select(feats: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """The head's input: chosen layers' mean and std, flattened, float32[N, F]."""
    return feats[:, list(layers)].reshape(len(feats), -1).astype(np.float32)


def site_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of a site's windows."""
    return x.mean(axis=0), x.std(axis=0) + 1e-4


def leg_means(x: np.ndarray, speakers: Sequence[str], clips: int, seed: int) -> np.ndarray:
    """For each clip, the mean of ``clips`` other clips of its speaker (random, fewer if it has fewer)."""
    rng = np.random.default_rng(seed)
    speakers = np.asarray(speakers)
    out = np.empty_like(x)
    for s in np.unique(speakers):
        idx = np.flatnonzero(speakers == s)
        for i in idx:
            others = idx[idx != i]
            pick = rng.choice(others, size=min(clips, len(others)), replace=False) if len(others) else [i]
            out[i] = x[pick].mean(axis=0)
    return out


def adapt(x: np.ndarray, speakers: Sequence[str], history_s: float, opts: HeadOptions, seed: int,
          site: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Standardise like the daemon after ``history_s`` seconds of leg: site statistics (``site`` or
    those of ``x`` itself), the leg's mean blended in with the daemon's weight for that many 1 s hops."""
    mean, std = site if site is not None else site_stats(x)
    weight = leg_weight(history_s, opts.leg_prior, opts.leg_cap) if history_s > 0 else 0.0
    if weight > 0:
        clips = max(1, int(np.ceil(history_s / WINDOW_CLIP_S)))
        mean = mean + weight * (leg_means(x, speakers, clips, seed) - mean)
    return ((x - mean) / std).astype(np.float32)


def fit_head(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, hidden: int,
             settings: TrainSettings, seed: int, log: Log) -> nn.Module:
    """Class-weighted cross-entropy with AdamW (``y``: class indices, or a teacher's probabilities float[N, C] to
    distil); the epoch with the best validation UAR is kept."""
    torch.manual_seed(seed)
    size = x.shape[1]
    head = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, len(CLASSES))) if hidden else nn.Linear(size, len(CLASSES))
    xt, yt, xv = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_val)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    weight = class_weights(y if y.ndim == 1 else y.argmax(1), len(CLASSES), settings.class_weight_power)
    drop = nn.Dropout(0.2)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for epoch in range(settings.epochs):
        head.train()
        for idx in torch.randperm(len(xt), generator=gen).split(settings.batch_size):
            loss = nn.functional.cross_entropy(head(drop(xt[idx])), yt[idx], weight=weight, label_smoothing=settings.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            uar = classification_report(y_val, head(xv).numpy(), CLASSES)["uar"]
        if uar > best:
            best, best_state = uar, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    log(f"head: best validation UAR {best:.3f}")
    return head.eval()


@dataclass
class Head:
    """A fitted head with its training site statistics, NEGATIVE shift (folded in) and temperature."""

    head: nn.Module
    mean: np.ndarray
    std: np.ndarray
    temperature: float

    def logits(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.head(torch.from_numpy(z)).numpy()


def output_bias(head: nn.Module) -> torch.Tensor:
    return (head[-1] if isinstance(head, nn.Sequential) else head).bias


def train_head(train: dict[str, np.ndarray], y: np.ndarray, speakers: np.ndarray, tr: np.ndarray, va: np.ndarray,
               opts: HeadOptions, settings: TrainSettings, target: float | None, seed: int, log: Log) -> Head:
    """Fit on the training speakers' ``train_conditions`` (each standardised by its own site statistics, once
    with no leg history and once with ``history_s``), choose the operating point and temperature on the
    validation speakers' telephony condition (site statistics only: the first seconds of a call)."""
    xs, ys = [], []
    for cond in opts.train_conditions:
        x = select(train[cond][tr], opts.layers)
        for history in (0.0, opts.history_s):
            xs.append(adapt(x, speakers[tr], history, opts, seed))
            ys.append(y[tr])
    x_val = adapt(select(train["telephony"][va], opts.layers), speakers[va], 0.0, opts, seed)
    head = fit_head(np.concatenate(xs), np.concatenate(ys), x_val, y[va], opts.head_hidden, settings, seed, log)
    mean, std = site_stats(np.concatenate([select(train[c][tr], opts.layers) for c in opts.train_conditions]))
    val_logits = Head(head, mean, std, 1.0).logits(x_val)
    if target is not None:
        shift = recall_bias(val_logits, y[va], CLASSES.index(NEGATIVE), target)
        with torch.no_grad():
            output_bias(head)[CLASSES.index(NEGATIVE)] += shift
        val_logits[:, CLASSES.index(NEGATIVE)] += shift
        log(f"NEGATIVE logit shifted by {shift:.2f} for validation recall >= {target}")
    return Head(head, mean, std, fit_temperature(val_logits, y[va]))


def report(head: Head, z: np.ndarray, y: np.ndarray) -> dict:
    """Calibrated and raw reports for standardised features."""
    logits = head.logits(z)
    return {"raw": classification_report(y, softmax(logits), CLASSES),
            "calibrated": classification_report(y, softmax(logits, head.temperature), CLASSES)}


def export(head: Head, opts: HeadOptions, out_dir: Path, card: str) -> EmoVoiceWhisperForAudioClassification:
    """An ``emovoice-whisper`` directory: config (encoder name, layers, temperature), head + statistics only."""
    from transformers import WhisperConfig

    whisper = WhisperConfig.from_pretrained(str(resolve_encoder(opts.encoder))).to_dict()
    keep = ("d_model", "num_mel_bins", "encoder_attention_heads", "encoder_ffn_dim", "max_source_positions", "activation_function")
    config = EmoVoiceWhisperConfig(encoder=opts.encoder, whisper={k: whisper[k] for k in keep},
                                   encoder_layers=max(opts.layers), layers=list(opts.layers),
                                   head_hidden=opts.head_hidden, temperature=head.temperature, chunk_s=opts.chunk_s)
    model = EmoVoiceWhisperForAudioClassification(config)
    with torch.no_grad():
        model.feature_mean.copy_(torch.from_numpy(head.mean))
        model.feature_std.copy_(torch.from_numpy(head.std))
        model.head.load_state_dict(head.head.state_dict())
    from training.export import save_model_dir

    save_model_dir(model, out_dir, head.temperature, False, card, state_dict=model.head_state_dict())
    return model


WARMUP_S = (0.0, 3.0, 10.0, 30.0, 60.0)


def _evaluate(head: Head, feats: dict[str, np.ndarray], idx: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
              conditions: Sequence[str], opts: HeadOptions, history_s: float, seed: int) -> dict:
    return {c: report(head, adapt(select(feats[c][idx], opts.layers), speakers[idx], history_s, opts, seed), labels[idx])
            for c in conditions}


def warmup_rows(head: Head, sets: dict[str, tuple], opts: HeadOptions, seed: int) -> list[str]:
    """UAR (telephony, clean) per data set: training statistics only, then site statistics with 0-60 s of leg."""
    lines = ["| data | condition | training stats (no adaptation) | " + " | ".join(
        "site only" if s == 0 else f"site + {s:g} s of leg" for s in WARMUP_S) + " |", "|---|---|" + "---|" * (len(WARMUP_S) + 1)]
    for name, (feats, idx, labels, speakers) in sets.items():
        for cond in [c for c in ("telephony", "clean") if c in feats]:
            x = select(feats[cond][idx], opts.layers)
            cells = [report(head, ((x - head.mean) / head.std).astype(np.float32), labels[idx])["calibrated"]["uar"]]
            cells += [report(head, adapt(x, speakers[idx], s, opts, seed), labels[idx])["calibrated"]["uar"] for s in WARMUP_S]
            lines.append(f"| {name} | {cond} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return lines


def save_probs(path: Path, head: Head, opts: HeadOptions, cfg, sets: dict[str, tuple]) -> None:  # noqa: ANN001
    """The shipped head's calibrated telephony probabilities per data set (for ``bench/bench_cascade.py``)."""
    specs = {s.kind: s for s in [*cfg.train_corpora, *cfg.test_corpora]}
    arrays: dict[str, np.ndarray] = {"names": np.array(list(sets))}
    for name, (feats, idx, labels, speakers) in sets.items():
        z = adapt(select(feats["telephony"][idx], opts.layers), speakers[idx], opts.history_s, opts, cfg.seed)
        arrays |= {f"{name}/kind": np.array(specs[name].kind), f"{name}/path": np.array(str(specs[name].path)),
                   f"{name}/indices": idx, f"{name}/labels": labels[idx], f"{name}/probs": softmax(head.logits(z), head.temperature)}
    np.savez(path, **arrays)


def run(cfg, log: Log = print) -> dict:  # noqa: ANN001 (training.config.RunConfig)
    """Every speaker fold (head per fold), every test corpus, warm-up table, the shipped fold's export."""
    import json

    from training.evaluate import fold_table, headline, metrics_table, summarize_folds
    from training.export import card_meta, render_card
    from training.config import default_cache_dir
    from training.run import load
    from training.splits import check_speakers, holdout_speakers, speaker_folds

    torch.set_num_threads(cfg.num_threads)
    opts = HeadOptions.from_dict(cfg.model)
    conds = list(cfg.evaluation.conditions)
    data = load(cfg.train_corpora, cfg.cache_dir)
    check_speakers(data.utts, cfg.evaluation.folds, cfg.evaluation.val_fraction)
    tests = [load([s], cfg.cache_dir) for s in cfg.test_corpora]
    cache = FeatureCache(opts, Path(cfg.cache_dir or default_cache_dir()) / "features", cfg.augment, cfg.seed, log)
    train_feats = {c: cache.get(data, c) for c in dict.fromkeys(("telephony", *opts.in_corpus_conditions, *opts.train_conditions))}
    test_sets = {t.name: ({c: cache.get(t, c) for c in conds}, np.arange(len(t.utts)), t.labels,
                          np.array([u.speaker for u in t.utts])) for t in tests}
    speakers = np.array([u.speaker for u in data.utts])
    ship = int(cfg.ship[4:]) if cfg.ship.startswith("fold") else 0
    records, shipped = [], None
    for k, (train_idx, test_idx) in enumerate(speaker_folds(data.utts, cfg.evaluation.folds, cfg.seed)):
        tr_rel, va_rel = holdout_speakers([data.utts[i] for i in train_idx], cfg.evaluation.val_fraction, cfg.seed + k)
        tr, va = train_idx[tr_rel], train_idx[va_rel]
        log(f"== fold {k + 1}: {len(tr)} training clips, {len(va)} validation clips, {len(test_idx)} test clips")
        head = train_head(train_feats, data.labels, speakers, tr, va, opts, cfg.train, cfg.evaluation.negative_recall_target, cfg.seed + k, log)
        record = {"fold": k, "temperature": head.temperature, "val_speakers": sorted(set(speakers[va])),
                  "test_speakers": sorted(set(speakers[test_idx])),
                  "train": {data.name: _evaluate(head, train_feats, test_idx, data.labels, speakers, opts.in_corpus_conditions, opts,
                                                 opts.history_s, cfg.seed)},
                  "tests": {n: _evaluate(head, f, i, y, s, conds, opts, opts.history_s, cfg.seed) for n, (f, i, y, s) in test_sets.items()}}
        records.append(record)
        log(f"fold {k + 1}: " + ", ".join(f"{c} UAR {record['train'][data.name][c]['calibrated']['uar']:.3f}" for c in conds))
        if k == ship:
            shipped = (head, test_idx, record)
    head, test_idx, record = shipped
    keys = ("uar", "negative_recall", "negative_precision", "neutral_recall", "ece_raw", "ece_calibrated")
    history = f"site statistics + {opts.history_s:g} s of leg"
    own = opts.in_corpus_conditions
    rows = [(f"{data.name} held-out actors, mean ± std over {len(records)} folds ({history})", c,
             summarize_folds([r["train"][data.name] for r in records])[c]) for c in own]
    rows += [(f"{data.name} fold-{ship + 1} held-out actors, shipped model ({history})", c, headline(record["train"][data.name][c])) for c in own]
    rows += [(f"{n} (never trained on), shipped model ({history})", c, headline(record["tests"][n][c])) for n in test_sets for c in conds]
    rows += [(f"{n} (never trained on), fold models mean ± std", c, summarize_folds([r["tests"][n] for r in records])[c])
             for n in test_sets for c in conds]
    table = metrics_table(rows, keys)
    warm_sets = {f"{data.name} fold-{ship + 1} held-out": (train_feats, test_idx, data.labels, speakers), **test_sets}
    warm = "\n".join(warmup_rows(head, warm_sets, opts, cfg.seed))
    folds_md = fold_table(records)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.md").write_text(f"{table}\n\nPer fold:\n\n{folds_md}\n\nWarm-up (UAR, shipped model):\n\n{warm}\n")
    (out / "records.json").write_text(json.dumps(records, indent=1))
    save_probs(out / "shipped_probs.npz", head, opts, cfg, {data.name: (train_feats, test_idx, data.labels, speakers), **test_sets})
    log(f"{table}\n\nPer fold:\n\n{folds_md}\n\nWarm-up (UAR, shipped model):\n\n{warm}")
    if cfg.export_dir:
        note = (f"the fold-{ship + 1} head, trained on that fold's training actors minus its validation actors "
                f"({len(record['val_speakers'])}); its {len(record['test_speakers'])} test actors were never seen")
        sections = {
            "Intended use": cfg.card.get("intended_use", "3-class caller emotion on telephone audio, 3 s windows."),
            "Training data": cfg.card.get("data", data.name) + f"\n\nShipped head: {note}.",
            "Licence and attribution": cfg.card.get("licence", ""),
            "Evaluation protocol": cfg.card.get("protocol", ""),
            "Metrics": f"{table}\n\nWarm-up (UAR by seconds of leg history; site statistics only = 0 s):\n\n{warm}",
            "Limitations": cfg.card.get("limitations", ""),
            "Reproduce": cfg.card.get("reproduce", ""),
        }
        model = EmoVoiceWhisperForAudioClassification(EmoVoiceWhisperConfig())  # for the card's header only
        card = render_card(cfg.card.get("title", "EmoVoice Whisper-encoder emotion model"), sections, card_meta(model, head.temperature))
        export(head, opts, Path(cfg.export_dir), card)
        log(f"exported to {cfg.export_dir}")
    return {"records": records}
