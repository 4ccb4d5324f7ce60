"""The whole experiment: speaker folds -> train -> calibrate -> evaluate -> train the shipped model -> export."""
from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForAudioClassification, PreTrainedModel

import emovoice_daemon.scoring.models  # noqa: F401  (registers the EmoVoice model types)
from training.audio import AudioStore
from training.calibration import fit_temperature
from training.config import CorpusSpec, RunConfig
from training.corpora import CLASSES, NEGATIVE, Utterance, load_corpus
from training.evaluate import (
    condition_waves,
    evaluate,
    fold_table,
    headline,
    metrics_table,
    save_confusions,
    summarize_folds,
)
from training.export import card_meta, render_card, save_model_dir
from training.loop import Log, TrainData, predict_logits
from training.operating_point import recall_bias, shift_output
from training.splits import check_speakers, holdout_speakers, speaker_folds

TRAINER_MODULES = {"compact": "training.train_compact", "hubert": "training.train_hubert", "superb": "training.train_superb",
                   "whisper": "training.train_whisper"}  # whisper: its own cached-feature protocol (run() only)


@dataclass
class Corpus:
    """Loaded utterances, their 8 kHz audio and integer labels."""

    name: str
    utts: list[Utterance]
    store: AudioStore
    labels: np.ndarray


def load(specs: Sequence[CorpusSpec], cache_dir: Path | None) -> Corpus:
    """Load and concatenate corpora."""
    utts = [u for s in specs for u in load_corpus(s.kind, s.path, s.label_map, **s.options)]
    labels = np.array([CLASSES.index(u.label) for u in utts])
    return Corpus("+".join(s.kind for s in specs), utts, AudioStore.load(utts, cache_dir), labels)


@dataclass
class Trained:
    """A trained, calibrated model and how it was obtained."""

    model: PreTrainedModel
    temperature: float
    history: list[dict]
    val_speakers: list[str]


def train_on(cfg: RunConfig, data: Corpus, indices: np.ndarray, seed: int, log: Log) -> Trained:
    """Train on ``indices`` minus a sex-balanced set of held-out validation speakers (epoch choice, temperature)."""
    tr_rel, va_rel = holdout_speakers([data.utts[i] for i in indices], cfg.evaluation.val_fraction, seed)
    tr, va = indices[tr_rel], indices[va_rel]
    val_waves = condition_waves(data.store, va, "telephony", cfg.evaluation.window_seconds)
    trainer = importlib.import_module(TRAINER_MODULES[cfg.model_kind])
    log(f"training {cfg.model_kind} on {len(tr)} clips, validating on {len(va)} clips")
    split = TrainData([data.store[i] for i in tr], data.labels[tr], val_waves, data.labels[va])
    model, history = trainer.train(cfg.model, split, cfg.train, cfg.augment, seed, log)
    val_logits = predict_logits(model, val_waves)
    target = cfg.evaluation.negative_recall_target
    if target is not None:
        shift = recall_bias(val_logits, data.labels[va], CLASSES.index(NEGATIVE), target)
        shift_output(model, CLASSES.index(NEGATIVE), shift)
        val_logits[:, CLASSES.index(NEGATIVE)] += shift
        log(f"NEGATIVE logit shifted by {shift:.2f} for validation recall >= {target}")
    temperature = fit_temperature(val_logits, data.labels[va])
    log(f"temperature {temperature:.3f}")
    return Trained(model, temperature, history, sorted({data.utts[i].speaker for i in va}))


def fold_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "folds"


def run_folds(cfg: RunConfig, folds_to_run: Sequence[int], log: Log = print) -> None:
    """Train, calibrate and evaluate the given speaker folds; each writes ``folds/fold<k>.json`` and ``folds/fold<k>_model``.

    Folds are independent, so they can run in separate processes (e.g. one thread each) and be summarised later.
    """
    if cfg.model_kind == "whisper":
        raise ValueError("model_kind whisper runs every fold from cached features in seconds: use run without --folds/--finalize")
    torch.set_num_threads(cfg.num_threads)
    data = load(cfg.train_corpora, cfg.cache_dir)
    check_speakers(data.utts, cfg.evaluation.folds, cfg.evaluation.val_fraction)
    tests = [load([s], cfg.cache_dir) for s in cfg.test_corpora]
    conds, window = cfg.evaluation.conditions, cfg.evaluation.window_seconds
    folds = speaker_folds(data.utts, cfg.evaluation.folds, cfg.seed)
    fold_dir(cfg).mkdir(parents=True, exist_ok=True)
    for k in folds_to_run:
        train_idx, test_idx = folds[k]
        log(f"== fold {k + 1}/{len(folds)}: {len({data.utts[i].speaker for i in test_idx})} test speakers")
        result = train_on(cfg, data, train_idx, cfg.seed + k, log)
        ev = evaluate(result.model, data.store, data.labels, test_idx, result.temperature, conds, window)
        record = {"fold": k, "temperature": result.temperature, "history": result.history, "val_speakers": result.val_speakers,
                  "test_speakers": sorted({data.utts[i].speaker for i in test_idx}), "train": {data.name: ev}, "tests": {}}
        for t in tests:
            record["tests"][t.name] = evaluate(result.model, t.store, t.labels, np.arange(len(t.utts)), result.temperature, conds, window)
        save_model_dir(result.model, fold_dir(cfg) / f"fold{k}_model", result.temperature, _normalizes(result.model), f"Fold {k + 1} model; see fold{k}.json.\n")
        (fold_dir(cfg) / f"fold{k}.json").write_text(json.dumps(record, indent=1))
        log(f"fold {k + 1}: " + ", ".join(f"{c} UAR {ev[c]['calibrated']['uar']:.3f}" for c in conds))


def finalize(cfg: RunConfig, log: Log = print) -> dict:
    """Summarise the fold results, get the shipped model (a fold's, or train the final one), report and export."""
    torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    conds, window = cfg.evaluation.conditions, cfg.evaluation.window_seconds
    records = [json.loads(p.read_text()) for p in sorted(fold_dir(cfg).glob("fold*.json"))]
    if not records:
        raise ValueError(f"no fold results under {fold_dir(cfg)}")
    train_name = next(iter(records[0]["train"]))
    summary = {"config": _jsonable(asdict(cfg)), "folds_run": [r["fold"] for r in records], "n_folds": cfg.evaluation.folds}
    label = f"{train_name} held-out speakers, mean ± std over {len(records)} of {cfg.evaluation.folds} speaker folds"
    summary[train_name] = summarize_folds([r["train"][train_name] for r in records])
    rows = [(label, c, summary[train_name][c]) for c in conds]
    confusions = {f"{train_name}_{c}_pooled_folds": summary[train_name][c]["confusion"] for c in conds}
    for name in records[0]["tests"]:
        summary[f"{name}_fold_models"] = summarize_folds([r["tests"][name] for r in records])
        rows += [(f"{name} (all clips, never trained on), fold models mean ± std", c, summary[f"{name}_fold_models"][c]) for c in conds]
    if cfg.ship.startswith("fold"):
        k = int(cfg.ship[4:])
        record = next(r for r in records if r["fold"] == k)
        model = AutoModelForAudioClassification.from_pretrained(fold_dir(cfg) / f"fold{k}_model")
        shipped = Trained(model, record["temperature"], record["history"], record["val_speakers"])
        ship_note = (f"the fold-{k + 1} model, trained on that fold's training speakers minus its validation speakers; "
                     f"its test speakers ({len(record['test_speakers'])}) were never seen")
        ship_eval = {train_name: record["train"][train_name], **record["tests"]}
        ship_rows = [(f"{train_name} fold-{k + 1} held-out speakers, shipped model", c, headline(ship_eval[train_name][c])) for c in conds]
    else:
        data = load(cfg.train_corpora, cfg.cache_dir)
        log("== final model on all speakers (minus validation speakers)")
        shipped = train_on(cfg, data, np.arange(len(data.utts)), cfg.seed + 1000, log)
        ship_note = "trained on all speakers of the training corpora except the validation speakers; the fold numbers estimate its performance"
        ship_eval = {t.name: evaluate(shipped.model, t.store, t.labels, np.arange(len(t.utts)), shipped.temperature, conds, window)
                     for t in (load([s], cfg.cache_dir) for s in cfg.test_corpora)}
        ship_rows = []
    ship_rows += [(f"{n} (all clips), shipped model", c, headline(e[c])) for n, e in ship_eval.items() if n != train_name for c in conds]
    rows += ship_rows
    confusions |= {f"{n}_{c}_shipped": e[c]["calibrated"]["confusion"] for n, e in ship_eval.items() for c in conds}
    save_confusions(confusions, out)
    summary["shipped"] = {"note": ship_note, "temperature": shipped.temperature, "val_speakers": shipped.val_speakers,
                          **{n: {c: headline(e[c]) for c in conds} for n, e in ship_eval.items()}}
    table = metrics_table(rows)
    (out / "metrics.md").write_text(f"{table}\n\nPer fold ({train_name} held-out speakers):\n\n{fold_table(records)}\n")
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    log(table)
    export_to = cfg.export_dir or out / "model"
    card = render_card(
        cfg.card.get("title", f"EmoVoice {cfg.model_kind} emotion model"),
        {
            "Intended use": cfg.card.get("intended_use", "3-class caller emotion (NEGATIVE / NEUTRAL / POSITIVE) on 8 kHz telephone audio, 3 s windows."),
            "Training data": cfg.card.get("data", train_name) + f"\n\nShipped model: {ship_note}.",
            "Licence and attribution": cfg.card.get("licence", "See the training corpora's licences."),
            "Evaluation protocol": f"{cfg.evaluation.folds}-fold group k-fold over speakers (sex-balanced, seed {cfg.seed}), never split by clip; "
            f"within each training side {cfg.evaluation.val_fraction:.0%} of the speakers are held out for epoch selection, "
            "the NEGATIVE operating point and temperature scaling (all under the telephony condition). Clips are scored on their central "
            f"{window:g} s, the daemon's window. Metrics use the calibrated probabilities (the argmax does not depend on T).",
            "Metrics": table,
            "Limitations": cfg.card.get("limitations", "Acted speech; real callers are subtler."),
            "Reproduce": cfg.card.get("reproduce", "emovoice-train run --config <this config>"),
        },
        card_meta(shipped.model, shipped.temperature),
    )
    save_model_dir(shipped.model, export_to, shipped.temperature, _normalizes(shipped.model), card)
    log(f"exported to {export_to}")
    return summary


def run(cfg: RunConfig, log: Log = print) -> dict:
    """Every fold, then :func:`finalize` (the Whisper-encoder path runs its own cached-feature protocol)."""
    if cfg.model_kind == "whisper":
        from training import train_whisper

        return train_whisper.run(cfg, log)
    run_folds(cfg, range(min(cfg.evaluation.max_folds or cfg.evaluation.folds, cfg.evaluation.folds)), log)
    return finalize(cfg, log)


def _normalizes(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "do_normalize", False))


def _jsonable(x: object) -> object:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return str(x) if isinstance(x, Path) else x
