"""Refit a model on a site's verdicts: what is cheap and safe, validated on calls it did not fit.

Refittable: the models whose head reads standardised pooled features (a Whisper-encoder head: ``feature_mean`` /
``feature_std``; a compact student: its ``feature_norm``'s running statistics) through one hidden layer or none.

What is refitted: the head's **last layer** (weights and bias, on the hidden activations of the frozen first
layer), or its **bias** alone (the NEGATIVE operating point; whichever validates better: a site of few voices can
teach the whole layer their identity) and the escalation **thresholds** (``enter``, with ``exit``
and ``alert`` kept at their offsets from it). Everything else (encoder, first layer, standardisation, temperature,
smoothing) stays, so a refit model reads the same features as its parent.

How: the site's verdict windows (standardised as the daemon's line adaptation does: the site mean of
``site_stats``, else the training mean; the training spread) are mixed with the **replay set** the model directory
ships (``replay.npz``: hidden activations of CREMA-D training actors' windows with their 3-class labels, written by
``emovoice-train head``) so the training classes are not forgotten. The loss is the verdicts' binary NLL of
P(NEGATIVE) ("upset" or not; NEUTRAL and POSITIVE are both "not upset"), class-balanced, plus the replay set's
class-balanced cross-entropy, plus an L2 pull toward the current weights; full-batch L-BFGS. ``enter`` is the
middle of the grid values with the fewest call-level mistakes on the verdict calls, each scored by a refit that did not
see it (below).

Validation: the verdict calls are dealt into folds by caller (``SiteVerdicts.callers`` where known, else each call is
its own caller: a caller heard in the fit would flatter the validation); each fold is scored by a refit on the other
folds and by the current model. A verdict call's windows,
in the order given, are replayed through the daemon's :class:`EscalationPolicy` as consecutive 1 s hops: a call
without an upset window is a mistake if it alerts, a call with one is a mistake unless it alerts at or after its
first upset window. ``improved``: at least MIN_FEWER_MISTAKES fewer mistakes, with the replay set's guard UAR within
``FORGET_UAR`` of before. The model written is refitted on all verdict calls.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from emovoice_daemon.config import EscalationConfig
from emovoice_daemon.judgement.policy import replay

log = logging.getLogger(__name__)

REPLAY_FILE = "replay.npz"  # hidden: float16[M, H], labels: int8[M] (class index), guard: bool[M]; in the model directory
LEARNED_FILE = "learned.json"  # provenance of a refitted directory
ESCALATION_FILE = "escalation.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPES = ("emovoice-whisper", "emovoice-compact")
BN_EPS = 1e-5  # torch's BatchNorm1d default, which the compact model's feature norm keeps
MIN_CALLS_EACH = 2  # verdict calls with an upset window, and without, needed to fit and validate
FOLDS = 3
MIN_FEWER_MISTAKES = 2  # a refit is better when it makes at least this many fewer call-level mistakes (1 is noise)
HOP_S, WINDOW_S = 1.0, 3.0  # verdict windows of a call are replayed as consecutive hops
ANCHOR = 1e-2  # L2 pull toward the current last layer, per weight
REPLAY_WEIGHTS = (1.0, 4.0, 16.0, 64.0)  # the replay set's loss against the verdicts' (each a class-balanced mean)
PARTS = ("bias", "layer")  # what a refit may change: the last layer's bias alone, or the whole last layer
ENTER_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
FORGET_UAR = 0.01  # the guard windows' UAR may fall this much at most (CREMA-D held-out actors fell about twice as far)
MAX_REPLAY_BYTES = 2_000_000  # the replay set's activations, float16, at most


@dataclass
class SiteVerdicts:
    """Verdict windows of a site: what agents and supervisors said about the windows of their calls."""

    features: np.ndarray  # float32[N, F], unnormalised pooled head inputs (WindowResult.features)
    upset: np.ndarray  # bool[N]: the verdict says the caller was upset in this window
    calls: np.ndarray  # str[N]: call id of each window (validation splits by call, never by window)
    callers: np.ndarray | None = None  # str[N]: the caller, where known (e.g. the number): their calls stay together

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, np.float32)
        self.upset = np.asarray(self.upset, bool)
        self.calls = np.asarray(self.calls).astype(str)
        self.callers = self.calls if self.callers is None else np.asarray(self.callers).astype(str)
        n = len(self.features)
        if self.features.ndim != 2 or {self.upset.shape, self.calls.shape, self.callers.shape} != {(n,)}:
            raise ValueError(f"verdicts: features [N, F], upset, calls and callers [N] disagree: {self.features.shape}, "
                             f"{self.upset.shape}, {self.calls.shape}, {self.callers.shape}")


@dataclass
class RefitReport:
    """Validation of the current and the refitted model on verdict calls neither was fitted on."""

    improved: bool
    before: dict[str, float]
    after: dict[str, float]

    def summary(self) -> str:
        keys = [k for k in self.before if k in self.after]
        rows = [f"  {k}: {self.before[k]:.3g} -> {self.after[k]:.3g}" for k in keys]
        verdict = "improved" if self.improved else "not improved (keep the current model)"
        part = "the last layer" if self.after.get("last_layer") else "the last layer's bias"
        return "\n".join([f"refit of {part} on site verdicts: {verdict}", *rows])


@dataclass
class _Model:
    """The parts of a refittable model directory a refit reads and writes."""

    tensors: dict[str, np.ndarray]
    config: dict[str, Any]
    escalation: dict[str, Any]
    replay: tuple[np.ndarray, np.ndarray] | None  # replayed windows: (hidden float32[M, H], labels int[M])
    guard: tuple[np.ndarray, np.ndarray] | None  # windows of speakers the head was not fitted on: the forgetting check
    mean: np.ndarray  # the training statistics that standardise the pooled features
    std: np.ndarray
    first: str | None  # the head's hidden layer (ReLU after it), None for a single layer
    last: str  # the head's last layer, the one refitted

    @property
    def negative(self) -> int:
        return int(self.config["label2id"]["NEGATIVE"])

    def hidden(self, z: np.ndarray) -> np.ndarray:
        """The last layer's input for standardised features."""
        if self.first is None:
            return z
        return np.maximum(z @ self.tensors[f"{self.first}.weight"].T + self.tensors[f"{self.first}.bias"], 0.0).astype(np.float32)


def _standardisation(tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    if "feature_mean" in tensors:
        return tensors["feature_mean"], tensors["feature_std"]
    if "norm.running_mean" in tensors:
        return tensors["norm.running_mean"], np.sqrt(tensors["norm.running_var"] + BN_EPS).astype(np.float32)
    return None


def _head_layers(tensors: dict[str, np.ndarray]) -> tuple[str | None, str]:
    """The head's linear layers (``head.N`` in a Sequential with dropouts and a ReLU between; or ``head`` alone)."""
    layers = sorted((int(k.split(".")[1]) for k in tensors if re.fullmatch(r"head\.\d+\.weight", k)))
    if not layers:
        return None, "head"
    if len(layers) > 2:
        raise ValueError(f"a head of {len(layers)} layers: only the last layer of a one- or two-layer head is refitted")
    return (f"head.{layers[0]}" if len(layers) == 2 else None), f"head.{layers[-1]}"


def _load(model_dir: Path) -> _Model:
    config = json.loads((model_dir / "config.json").read_text())
    tensors = load_file(str(model_dir / WEIGHTS_FILE)) if config.get("model_type") in MODEL_TYPES else {}
    stats = _standardisation(tensors)
    if stats is None:  # another model type (a cascade has no head of its own), or no standardised features
        raise ValueError(f"{model_dir}: only models whose head reads standardised features can be refitted (Whisper-"
                         f"encoder heads, compact students with feature_norm), not {config.get('model_type')!r}")
    esc_file = model_dir / ESCALATION_FILE
    escalation = json.loads(esc_file.read_text()) if esc_file.is_file() else {}
    replay_set = guard = None
    if (model_dir / REPLAY_FILE).is_file():
        with np.load(model_dir / REPLAY_FILE) as z:
            hidden, labels = z["hidden"].astype(np.float32), z["labels"].astype(np.int64)
            is_guard = z["guard"] if "guard" in z.files else np.zeros(len(labels), bool)
        replay_set = (hidden[~is_guard], labels[~is_guard])
        guard = (hidden[is_guard], labels[is_guard]) if is_guard.any() else replay_set
    return _Model(tensors, config, escalation, replay_set, guard, *stats, *_head_layers(tensors))


def _site_mean(site_stats: Path | None, prior: np.ndarray) -> np.ndarray:
    """The site mean the daemon's adapter learnt (``site-stats.npz``), else the model's training mean."""
    if site_stats is None or not Path(site_stats).is_file():
        return prior
    try:
        with np.load(site_stats) as z:
            mean = np.asarray(z["mean"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("site statistics %s unreadable (%s): refitting with the model's training mean", site_stats, exc)
        return prior
    if mean.shape != prior.shape:
        log.warning("site statistics %s are for another model: refitting with the model's training mean", site_stats)
        return prior
    return mean


def _p_negative(hidden: np.ndarray, w: np.ndarray, b: np.ndarray, temperature: float, neg: int) -> np.ndarray:
    logits = (hidden @ w.T + b) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p[:, neg] / p.sum(axis=1)


def _balanced(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-sample weights giving each present class the same total weight, summing to 1."""
    counts = torch.bincount(labels, minlength=classes).float()
    present = int((counts > 0).sum())
    return (1.0 / (present * counts.clamp(min=1)))[labels]


def _fit_last(model: _Model, hidden: np.ndarray, upset: np.ndarray, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The last layer (``part`` "layer") or its bias alone ("bias") refitted on verdict windows (+ the replay set),
    anchored at the current weights; the replay set weighs more (x4 at a time) while its UAR falls more than
    FORGET_UAR."""
    w0, b0 = (model.tensors[f"{model.last}.{k}"].astype(np.float32) for k in ("weight", "bias"))
    floor = (_replay_uar(model, w0, b0) or 0.0) - FORGET_UAR
    for weight in REPLAY_WEIGHTS:
        w, b = _lbfgs(model, hidden, upset, weight, part)
        if (_replay_uar(model, w, b) or 1.0) >= floor:
            break
    return w, b


def _lbfgs(model: _Model, hidden: np.ndarray, upset: np.ndarray, replay_weight: float,
           part: str) -> tuple[np.ndarray, np.ndarray]:
    w0 = torch.from_numpy(model.tensors[f"{model.last}.weight"].astype(np.float32))
    b0 = torch.from_numpy(model.tensors[f"{model.last}.bias"].astype(np.float32))
    w, b = w0.clone().requires_grad_(part == "layer"), b0.clone().requires_grad_(True)
    t, neg = float(model.config.get("temperature", 1.0)), model.negative
    others = [i for i in range(w0.shape[0]) if i != neg]
    x, y = torch.from_numpy(hidden), torch.from_numpy(upset.astype(np.int64))
    site_w = _balanced(y, 2)
    if model.replay is not None:
        rx, ry = torch.from_numpy(model.replay[0]), torch.from_numpy(model.replay[1])
        replay_w = _balanced(ry, w0.shape[0])
    opt = torch.optim.LBFGS([w, b] if part == "layer" else [b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax((x @ w.T + b) / t, dim=1)
        nll = torch.where(y.bool(), -logp[:, neg], -torch.logsumexp(logp[:, others], dim=1))
        loss = (site_w * nll).sum() + ANCHOR * ((w - w0).square().sum() + (b - b0).square().sum())
        if model.replay is not None:
            rlogp = torch.log_softmax((rx @ w.T + b) / t, dim=1)
            loss = loss + replay_weight * (replay_w * -rlogp.gather(1, ry[:, None])[:, 0]).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def _call_windows(calls: np.ndarray) -> dict[str, np.ndarray]:
    return {c: np.flatnonzero(calls == c) for c in dict.fromkeys(calls)}


def _mistakes(p: np.ndarray, upset: np.ndarray, calls: dict[str, np.ndarray],
              cfg_of: dict[str, EscalationConfig]) -> tuple[int, int, int, int]:
    """(calm calls alerted, calm calls, upset calls not alerted at/after their first upset window, upset calls),
    each call replayed under its own thresholds."""
    calm_alerted = calm = missed = angry = 0
    for c, idx in calls.items():
        ends = WINDOW_S + HOP_S * np.arange(len(idx))
        alerts = [at for at, sev in replay(cfg_of[c], zip(ends, p[idx])) if sev == "alert"]
        first = np.flatnonzero(upset[idx])
        if len(first):
            angry += 1
            missed += not any(at >= ends[first[0]] for at in alerts)
        else:
            calm += 1
            calm_alerted += bool(alerts)
    return calm_alerted, calm, missed, angry


def _with_enter(cfg: EscalationConfig, enter: float) -> EscalationConfig:
    shift = enter - cfg.enter
    clip = lambda v: float(min(0.99, max(0.01, round(v + shift, 3))))  # noqa: E731
    return dataclasses.replace(cfg, enter=enter, exit=clip(cfg.exit), alert=clip(cfg.alert))


def _choose_enter(p: np.ndarray, upset: np.ndarray, calls: dict[str, np.ndarray], cfg: EscalationConfig) -> EscalationConfig:
    """The middle of the ``enter`` values with the fewest call-level mistakes (a margin on both sides; ties of an
    even count go to the higher: a false alert costs the agents' trust)."""
    def cost(enter: float) -> float:
        calm_alerted, calm, missed, angry = _mistakes(p, upset, calls, dict.fromkeys(calls, _with_enter(cfg, enter)))
        return calm_alerted / max(calm, 1) + missed / max(angry, 1)

    costs = {e: cost(e) for e in ENTER_GRID}
    best = [e for e in ENTER_GRID if costs[e] <= min(costs.values()) + 1e-9]
    return _with_enter(cfg, best[len(best) // 2])


def _metrics(p: np.ndarray, upset: np.ndarray, calls: dict[str, np.ndarray], cfg_of: dict[str, EscalationConfig],
             replay_uar: float | None) -> dict[str, float]:
    calm_alerted, calm, missed, angry = _mistakes(p, upset, calls, cfg_of)
    idx = np.concatenate(list(calls.values()))
    q, upset = np.clip(p[idx], 1e-6, 1 - 1e-6), upset[idx]
    nll = -np.where(upset, np.log(q), np.log(1 - q))
    weights = np.where(upset, 0.5 / max(upset.sum(), 1), 0.5 / max((~upset).sum(), 1))
    out = {"calls": float(len(calls)), "calm_alert_pct": 100.0 * calm_alerted / max(calm, 1),
           "upset_alerted_pct": 100.0 * (angry - missed) / max(angry, 1),
           "mistakes": float(calm_alerted + missed), "nll": float((weights * nll).sum())}
    if replay_uar is not None:
        out["replay_uar"] = replay_uar
    return out


def _replay_uar(model: _Model, w: np.ndarray, b: np.ndarray) -> float | None:
    """UAR on the replay set's guard windows (its replayed ones when it has none)."""
    if model.guard is None:
        return None
    hidden, labels = model.guard
    pred = (hidden @ w.T + b).argmax(axis=1)
    return float(np.mean([np.mean(pred[labels == k] == k) for k in np.unique(labels)]))


def _folds(calls: dict[str, np.ndarray], upset: np.ndarray, callers: np.ndarray, seed: int) -> list[list[str]]:
    """Calls dealt into folds by caller (a caller's calls stay together; callers with an upset call and without
    dealt separately, seeded); only folds whose other folds hold both upset and calm windows to fit on."""
    angry_calls = [c for c, idx in calls.items() if upset[idx].any()]
    if min(len(angry_calls), len(calls) - len(angry_calls)) < MIN_CALLS_EACH:
        raise ValueError(f"too little to learn from: {len(angry_calls)} verdict calls with an upset caller and "
                         f"{len(calls) - len(angry_calls)} without (at least {MIN_CALLS_EACH} of each)")
    caller_of = {c: str(callers[idx[0]]) for c, idx in calls.items()}
    groups = sorted(set(caller_of.values()))
    upset_groups = {caller_of[c] for c in angry_calls}
    rng = np.random.default_rng(seed)
    n = min(FOLDS, len(groups))
    dealt: list[list[str]] = [[] for _ in range(n)]
    turn = 0
    for part in ([g for g in groups if g in upset_groups], [g for g in groups if g not in upset_groups]):
        for g in rng.permutation(part):
            dealt[turn % n].append(str(g))
            turn += 1
    folds = []
    for fold_groups in dealt:
        held = [c for c in calls if caller_of[c] in fold_groups]
        rest = np.concatenate([calls[c] for c in calls if caller_of[c] not in fold_groups] or [np.zeros(0, int)])
        if upset[rest].any() and not upset[rest].all():
            folds.append(held)
    if not folds:
        raise ValueError(f"too little to learn from: {len(groups)} callers, none of whom can be left out of the fit "
                         f"with both upset and calm verdicts remaining")
    return folds


def write_replay(model_dir: Path, features: np.ndarray, labels: np.ndarray, guard: np.ndarray, seed: int = 0) -> Path:
    """Store the model directory's replay set: the last layer's inputs (float16) for training-side windows
    (unnormalised pooled features, standardised by the model's training statistics), their class indices and
    whether each is a *guard* window (of speakers the head was not fitted on: checks forgetting, never refitted on);
    an equal number per class of each part drawn (seeded), two thirds of MAX_REPLAY_BYTES replayed, one third guard."""
    model_dir = Path(model_dir)
    model = _load(model_dir)
    labels, guard = np.asarray(labels), np.asarray(guard, bool)
    z = (np.asarray(features, np.float32) - model.mean) / model.std
    hidden = model.hidden(z.astype(np.float32))
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    pick = []
    for part, share in ((~guard, 2 / 3), (guard, 1 / 3)):
        per_class = int(share * MAX_REPLAY_BYTES) // (2 * hidden.shape[1] * len(classes))
        pick += [rng.permutation(np.flatnonzero(part & (labels == k)))[:per_class] for k in classes]
    rows = np.concatenate(pick)
    path = model_dir / REPLAY_FILE
    np.savez_compressed(path, hidden=hidden[rows].astype(np.float16), labels=labels[rows].astype(np.int8), guard=guard[rows])
    return path


def _cross_validate(model: _Model, hidden: np.ndarray, upset: np.ndarray, every: dict[str, np.ndarray],
                    folds: list[list[str]], base: EscalationConfig, part: str) -> tuple[dict[str, float], EscalationConfig]:
    """Held-out figures of refitting ``part``, each fold scored by a refit without it under thresholds chosen without
    it; and the thresholds chosen on all those held-out scores."""
    t, neg = float(model.config.get("temperature", 1.0)), model.negative
    calls = {c: every[c] for fold in folds for c in fold}
    p_after, cfgs = np.zeros(len(upset)), {}
    for fold in folds:
        fit = {c: idx for c, idx in every.items() if c not in fold}
        fit_idx = np.concatenate(list(fit.values()))
        w, b = _fit_last(model, hidden[fit_idx], upset[fit_idx], part)
        p_fit = _p_negative(hidden, w, b, t, neg)
        cfg = _choose_enter(p_fit, upset, fit, base)
        for c in fold:
            p_after[every[c]] = p_fit[every[c]]
            cfgs[c] = cfg
    return _metrics(p_after, upset, calls, cfgs, None), _choose_enter(p_after, upset, calls, base)


def refit(model_dir: Path, verdicts: SiteVerdicts, out_dir: Path, *, site_stats: Path | None = None,
          seed: int = 0) -> RefitReport:
    """Refit the model at ``model_dir`` on ``verdicts``, validate by call, write the refitted directory to
    ``out_dir`` (with ``learned.json``); ValueError (one line) when there is too little to learn from."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = _load(model_dir)
    mean = _site_mean(site_stats, model.mean)
    if verdicts.features.shape[1] != len(mean):
        raise ValueError(f"verdict features have {verdicts.features.shape[1]} values per window, the model reads {len(mean)}")
    z = ((verdicts.features - mean) / model.std).astype(np.float32)
    hidden, upset = model.hidden(z), verdicts.upset
    every = _call_windows(verdicts.calls)
    folds = _folds(every, upset, verdicts.callers, seed)
    calls = {c: every[c] for fold in folds for c in fold}  # validated: the calls of folds refitted without them
    base = dataclasses.replace(EscalationConfig(), **model.escalation)
    t, neg = float(model.config.get("temperature", 1.0)), model.negative
    w0, b0 = model.tensors[f"{model.last}.weight"], model.tensors[f"{model.last}.bias"]
    p_before = _p_negative(hidden, w0, b0, t, neg)
    before = _metrics(p_before, upset, calls, dict.fromkeys(calls, base), _replay_uar(model, w0, b0))
    tried = {part: _cross_validate(model, hidden, upset, every, folds, base, part) for part in PARTS}
    part = min(tried, key=lambda k: (tried[k][0]["mistakes"], tried[k][0]["nll"]))
    after, final = tried[part]
    w, b = _fit_last(model, hidden, upset, part)
    if "replay_uar" in before:
        after["replay_uar"] = _replay_uar(model, w, b)
    before["enter"], after["enter"], after["last_layer"] = base.enter, final.enter, float(part == "layer")
    improved = before["mistakes"] - after["mistakes"] >= MIN_FEWER_MISTAKES and (
        "replay_uar" not in before or after["replay_uar"] >= before["replay_uar"] - FORGET_UAR)
    report = RefitReport(improved, before, after)
    _write(model_dir, model, out_dir, (w, b), final, verdicts, report)
    return report


def _write(model_dir: Path, model: _Model, out_dir: Path, last: tuple[np.ndarray, np.ndarray], cfg: EscalationConfig,
           verdicts: SiteVerdicts, report: RefitReport) -> None:
    """A complete loadable directory: the parent's files, the new last layer, thresholds and provenance."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in (WEIGHTS_FILE, ESCALATION_FILE, LEARNED_FILE):
            shutil.copy2(f, out_dir / f.name)
    tensors = dict(model.tensors)
    tensors[f"{model.last}.weight"], tensors[f"{model.last}.bias"] = (a.astype(np.float32) for a in last)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    escalation = {**model.escalation, "enter": cfg.enter, "exit": cfg.exit, "alert": cfg.alert}
    (out_dir / ESCALATION_FILE).write_text(json.dumps(escalation, indent=1) + "\n")
    calls = set(verdicts.calls)
    learned = {"parent": str(model_dir.resolve()), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "verdict_calls": len(calls), "upset_calls": len(set(verdicts.calls[verdicts.upset])),
               "verdict_windows": len(verdicts.upset), "upset_windows": int(verdicts.upset.sum()),
               "replay_windows": 0 if model.replay is None else len(model.replay[1]),
               "improved": report.improved, "before": report.before, "after": report.after, "escalation": escalation}
    (out_dir / LEARNED_FILE).write_text(json.dumps(learned, indent=1) + "\n")
