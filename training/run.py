"""The whole experiment: speaker folds -> train -> calibrate -> evaluate -> train the shipped model -> export."""
from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from training.audio import AudioStore
from training.calibration import fit_temperature
from training.config import CorpusSpec, RunConfig
from training.corpora import CLASSES, Utterance, load_corpus
from training.evaluate import condition_waves, evaluate, headline, metrics_table, save_confusions, summarize_folds
from training.export import card_meta, render_card, save_model_dir
from training.loop import Log, predict_logits
from training.splits import holdout_speakers, speaker_folds

TRAINER_MODULES = {"compact": "training.train_compact", "hubert": "training.train_hubert", "superb": "training.train_superb"}


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
    train_speakers: list[str]


def train_on(cfg: RunConfig, data: Corpus, indices: np.ndarray, seed: int, log: Log) -> Trained:
    """Train on ``indices`` minus a sex-balanced set of held-out validation speakers (epoch choice, temperature)."""
    tr_rel, va_rel = holdout_speakers([data.utts[i] for i in indices], cfg.evaluation.val_fraction, seed)
    tr, va = indices[tr_rel], indices[va_rel]
    val_waves = condition_waves(data.store, va, "telephony", cfg.evaluation.window_seconds)
    trainer = importlib.import_module(TRAINER_MODULES[cfg.model_kind])
    log(f"training {cfg.model_kind} on {len(tr)} clips, validating on {len(va)} clips")
    model, history = trainer.train(
        cfg.model, [data.store[i] for i in tr], data.labels[tr], val_waves, data.labels[va], cfg.train, cfg.augment, seed, log
    )
    temperature = fit_temperature(predict_logits(model, val_waves), data.labels[va])
    log(f"temperature {temperature:.3f}")
    speakers = lambda idx: sorted({data.utts[i].speaker for i in idx})  # noqa: E731
    return Trained(model, temperature, history, speakers(va), speakers(tr))


def run(cfg: RunConfig, log: Log = print) -> dict:
    """Run the configured experiment; writes reports under ``cfg.output_dir`` and exports the shipped model."""
    torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load(cfg.train_corpora, cfg.cache_dir)
    tests = [load([s], cfg.cache_dir) for s in cfg.test_corpora]
    conds, window = cfg.evaluation.conditions, cfg.evaluation.window_seconds
    folds = speaker_folds(data.utts, cfg.evaluation.folds, cfg.seed)
    n_run = min(cfg.evaluation.max_folds or len(folds), len(folds))
    fold_evals, fold_tests, shipped, ship_note = [], {t.name: [] for t in tests}, None, ""
    for k in range(n_run):
        train_idx, test_idx = folds[k]
        log(f"== fold {k + 1}/{len(folds)}: {len({data.utts[i].speaker for i in test_idx})} test speakers")
        result = train_on(cfg, data, train_idx, cfg.seed + k, log)
        ev = evaluate(result.model, data.store, data.labels, test_idx, result.temperature, conds, window)
        fold_evals.append(ev)
        record = {"fold": k, "temperature": result.temperature, "history": result.history, "val_speakers": result.val_speakers,
                  "test_speakers": sorted({data.utts[i].speaker for i in test_idx}), data.name: ev}
        for t in tests:
            fold_tests[t.name].append(evaluate(result.model, t.store, t.labels, np.arange(len(t.utts)), result.temperature, conds, window))
            record[t.name] = fold_tests[t.name][-1]
        (out / "folds").mkdir(exist_ok=True)
        (out / "folds" / f"fold{k}.json").write_text(json.dumps(record, indent=1))
        log(f"fold {k + 1}: " + ", ".join(f"{c} UAR {ev[c]['calibrated']['uar']:.3f}" for c in conds))
        if cfg.ship == f"fold{k}":
            shipped = result
            ship_note = f"the fold-{k + 1} model: trained on that fold's training speakers (minus validation speakers); its own held-out numbers are in folds/fold{k}.json"
    if cfg.ship == "final":
        log("== final model on all speakers (minus validation speakers)")
        shipped = train_on(cfg, data, np.arange(len(data.utts)), cfg.seed + 1000, log)
        ship_note = "trained on all speakers of the training corpora except the validation speakers; the fold numbers estimate its performance"
    summary = {"config": _jsonable(asdict(cfg)), "folds_run": n_run, "n_folds": len(folds)}
    rows = []
    if fold_evals:
        summary[data.name] = summarize_folds(fold_evals)
        rows += [(f"{data.name} held-out speakers, {n_run}-fold mean ± std", c, summary[data.name][c]) for c in conds]
        confusions = {f"{data.name}_{c}_pooled_folds": summary[data.name][c]["confusion"] for c in conds}
        for name, evs in fold_tests.items():
            summary[f"{name}_fold_models"] = summarize_folds(evs)
            rows += [(f"{name} (all, never trained on), fold models mean ± std", c, summary[f"{name}_fold_models"][c]) for c in conds]
        save_confusions(confusions, out)
    if shipped is not None:
        ship_eval = {t.name: evaluate(shipped.model, t.store, t.labels, np.arange(len(t.utts)), shipped.temperature, conds, window) for t in tests}
        summary["shipped"] = {"note": ship_note, "temperature": shipped.temperature, "val_speakers": shipped.val_speakers, "history": shipped.history,
                              **{n: {c: headline(e[c]) for c in conds} | {"reports": e} for n, e in ship_eval.items()}}
        rows += [(f"{n} (all), shipped model", c, headline(e[c])) for n, e in ship_eval.items() for c in conds]
        save_confusions({f"{n}_{c}_shipped": e[c]["calibrated"]["confusion"] for n, e in ship_eval.items() for c in conds}, out)
    table = metrics_table(rows)
    (out / "metrics.md").write_text(table + "\n")
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    log(table)
    if shipped is not None:
        export_to = cfg.export_dir or out / "model"
        card = render_card(
            cfg.card.get("title", f"EmoVoice {cfg.model_kind} emotion model"),
            {
                "Intended use": cfg.card.get("intended_use", "3-class caller emotion (NEGATIVE / NEUTRAL / POSITIVE) on 8 kHz telephone audio, 3 s windows."),
                "Training data": cfg.card.get("data", data.name) + f"\n\nShipped model: {ship_note}.",
                "Licence and attribution": cfg.card.get("licence", "See the training corpora's licences."),
                "Evaluation protocol": f"{len(folds)}-fold group k-fold over speakers (sex-balanced, seed {cfg.seed}); "
                f"{n_run} folds run; within each training side {cfg.evaluation.val_fraction:.0%} of speakers are held out "
                "for epoch selection and temperature scaling (fitted under the telephony condition). Clips are scored on their central "
                f"{window:g} s, the daemon's window.",
                "Metrics": table,
                "Limitations": cfg.card.get("limitations", "Acted speech; real callers are subtler."),
                "Reproduce": cfg.card.get("reproduce", "emovoice-train run --config <this config>"),
            },
            card_meta(shipped.model, shipped.temperature),
        )
        save_model_dir(shipped.model, export_to, shipped.temperature, bool(getattr(shipped.model.config, "do_normalize", False)), card)
        log(f"exported to {export_to}")
    return summary


def _jsonable(x: object) -> object:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return str(x) if isinstance(x, Path) else x
