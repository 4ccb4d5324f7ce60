"""Learning each site, simulated (issue #26): verdicts on k calls -> refit -> whole calls of other speakers.

Per corpus and split, the speakers are dealt into a *verdict* side and a *scored* side: speakers grouped by the kinds
of call they have (calm, calm→angry, angry, calm→happy), each group shuffled (seeded by the split) and dealt
alternately, so both sides get calm and angry callers wherever the corpus has two such speakers. Every call is scored
by the current model through the production path (:func:`training.call_eval.score_calls`: engine, speech gate, line
adaptation learnt from other speakers, policy). The verdict side's calls, in a seeded order, give verdicts the way
agents would (:func:`verdict_labels`); the first k calls' verdict windows are refitted on
(:func:`emovoice_daemon.learning.refit.refit`, each window as the head saw it when the verdict was given), and the scored side's calls are scored again with the model the site would then run: the refit where
its own validation improved, else the current model. The refitted head is also scored on CREMA-D's held-out actors'
clips (telephony), to show the training classes were not forgotten.
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file

from emovoice_daemon.config import Config, EscalationConfig
from emovoice_daemon.judgement.policy import with_model_defaults
from emovoice_daemon.learning.refit import SiteVerdicts, refit
from emovoice_daemon.scoring.models.loader import Classifier, read_escalation
from training.call_eval import CallOutcome, call_metrics, score_calls
from training.calls import Call
from training.policy_search import replay

KS = (0, 5, 10, 20, 50)
LEAD_S, UPSET_LAST_S = 10.0, 30.0  # the daemon's label rule (learning.lead_s, learning.upset_last_s)
ESCALATION_S = 10.0  # how long after it was raised an escalation is taken to clear (or the agent to answer)
FIGURES = ("calm_alert_pct", "ramp_detected_pct", "ramp_delay_median_s", "angry_within_15s_pct")


def verdict_labels(o: CallOutcome) -> np.ndarray:
    """Per scored window of a call: 1 the verdict says upset, 0 not upset, -1 no verdict. Agents answer every
    escalation raised (watch or alert): confirmed when the caller was angry at that moment, else dismissed; a call
    with anger nothing was raised for is marked upset at its end, a call with no anger and no escalation is marked
    calm. The windows each verdict concerns follow the daemon's label rule (docs/operations.md, "Learning from
    verdicts"): an escalation's from LEAD_S before it until it cleared (taken as ESCALATION_S after it), a call marked
    upset its last UPSET_LAST_S, a call marked calm all of it."""
    ends = np.array([e for _, e, _ in o.scores])
    labels = np.full(len(ends), -1)
    onset = o.call.onset_s
    for at, _ in o.raised:
        labels[(ends >= at - LEAD_S) & (ends <= at + ESCALATION_S)] = int(onset is not None and at >= onset)
    if onset is not None and o.first(after=onset) is None and len(ends):
        labels[ends > ends[-1] - UPSET_LAST_S] = 1
    if onset is None and not o.raised:
        labels[:] = 0
    return labels


class FeatureTap:
    """Records each pass of a leg through the line adapter: every window's unnormalised head input and the
    standardised one the adapter returned (a call scored twice - once heard, once scored - has two passes)."""

    def __init__(self, classifier: Classifier) -> None:
        if classifier.adapter is None:
            raise SystemExit("emovoice-train site-sim: needs an encoder model with line adaptation (model.adapt)")
        self.classifier = classifier
        self.open: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        self.passes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        adapter = classifier.adapter
        normalise, close_leg = adapter.normalise, adapter.close_leg

        def tapped(legs: Sequence[str], feats: np.ndarray) -> np.ndarray:
            z = normalise(legs, feats)
            for leg, f, zf in zip(legs, feats, z):
                self.open[leg].append((np.asarray(f, np.float32), zf))
            return z

        def closed(leg: str) -> None:
            rows = self.open.pop(leg, [])
            if rows:
                feats, z = zip(*rows)
                self.passes[leg].append((np.stack(feats), np.stack(z)))
            close_leg(leg)

        adapter.normalise, adapter.close_leg = tapped, closed

    def windows(self, o: CallOutcome) -> tuple[np.ndarray, np.ndarray]:
        """The call's scored windows, in order: (features, standardised features) of the pass whose scores, through
        the head in use, are the outcome's."""
        want = np.array([p for _, _, p in o.scores])
        if not len(want):  # the speech gate heard no speech in it
            empty = np.zeros((0, self.classifier.model.config.feature_size), np.float32)
            return empty, empty
        for feats, z in reversed(self.passes[f"{o.call.name}:mixed"]):
            if len(z) == len(want):
                with torch.no_grad():
                    probs = self.classifier.probs_from_logits(self.classifier.model.classify(torch.from_numpy(z)))
                if np.allclose(probs[:, 0], want, atol=2e-4):
                    return feats, z
        raise RuntimeError(f"{o.call.name}: no recorded pass reproduces its {len(want)} scores")


def split_speakers(calls: Sequence[Call], seed: int) -> tuple[list[str], list[str]]:
    """(verdict side, scored side): speakers grouped by the kinds of call they have, dealt alternately."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for c in calls:
        kinds[c.speaker].add(c.kind)
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    for s in sorted(kinds):
        groups[frozenset(kinds[s])].append(s)
    rng = np.random.default_rng(seed)
    sides: tuple[list[str], list[str]] = ([], [])
    turn = 0
    for key in sorted(groups, key=sorted):
        for s in rng.permutation(groups[key]):
            sides[turn % 2].append(str(s))
            turn += 1
    return sides


class Site:
    """One model under the production path, whose head and escalation can be swapped for a refitted directory's."""

    def __init__(self, config: Config, classifier: Classifier, escalation: EscalationConfig) -> None:
        self.config, self.classifier, self.escalation = config, classifier, escalation
        self.base_head = {k: v.clone() for k, v in classifier.model.state_dict().items() if k.startswith("head.")}
        self.base_escalation = classifier.escalation
        self.use(None)

    def use(self, model_dir: Path | None) -> None:
        """Score with ``model_dir``'s head and escalation.json (None: the current model's)."""
        if model_dir is None:
            head, self.classifier.escalation = self.base_head, self.base_escalation
        else:
            head = {k: torch.from_numpy(v) for k, v in load_file(str(model_dir / "model.safetensors")).items() if k.startswith("head.")}
            self.classifier.escalation = read_escalation(model_dir)
        self.classifier.model.load_state_dict(head, strict=False)
        self.config.escalation = with_model_defaults(self.escalation, self.classifier.escalation)

    def score(self, calls: Sequence[Call]) -> list[CallOutcome]:
        return score_calls(calls, self.config, self.classifier)

    def rescore(self, o: CallOutcome, z: np.ndarray) -> CallOutcome:
        """The call as the current head and escalation would have gone: the same windows, standardised by the same
        line adapter (neither depends on the head), through the head and a fresh policy."""
        with torch.no_grad():
            probs = self.classifier.probs_from_logits(self.classifier.model.classify(torch.from_numpy(z)))
        scores = [(start, end, float(p)) for (start, end, _), p in zip(o.scores, probs[:, 0])]
        return replay(dataclasses.replace(o, scores=scores), self.config.escalation)


class HeldOut:
    """CREMA-D held-out (test) actors' clips, telephony, as the head's 3-class task (NEGATIVE = anger): the model's
    features of them (an encoder head's from the feature cache), standardised by its training statistics."""

    def __init__(self, model, cache_dir: str, log: Any) -> None:  # noqa: ANN001 (a model with pooled features)
        from training.call_head import ANGER_LABELS, relabel
        from training.compact_student import pooled
        from training.config import load_config
        from training.heldout import cremad_split
        from training.run import load
        from training.train_whisper import FeatureCache, HeadOptions, condition_wave, select

        cfg = load_config(Path("training/configs/whisper.yaml"), {})
        data = load(cfg.train_corpora, Path(cache_dir))
        y = relabel(np.array([u.emotion for u in data.utts]), ANGER_LABELS)
        test = np.isin([u.speaker for u in data.utts], cremad_split(data.utts)["test"]) & (y >= 0)
        if hasattr(model.config, "layers"):
            opts = dataclasses.replace(HeadOptions.from_dict(cfg.model), layers=tuple(model.config.layers))
            cache = FeatureCache(opts, Path(cache_dir) / "features", cfg.augment, cfg.seed, log)
            feats = select(cache.get(data, "telephony"), opts.layers)[test]
        else:
            feats = pooled(model, [condition_wave(data.store[i], int(i), "telephony", cfg.augment, cfg.seed)
                                   for i in np.flatnonzero(test)])
        self.z = ((torch.from_numpy(feats) - model.feature_mean) / model.feature_std).float()
        self.y = y[test]

    def uar(self, classifier: Classifier) -> float:
        with torch.no_grad():
            pred = classifier.model.classify(self.z).argmax(1).numpy()
        return float(np.mean([np.mean(pred[self.y == k] == k) for k in np.unique(self.y)]))


def simulate(site: Site, calls: Sequence[Call], held: HeldOut, splits: int, ks: Sequence[int], log: Any) -> list[dict]:
    """One row per (split, k): verdict calls used, refit outcome, the scored side's call figures, held-out UAR."""
    tap = FeatureTap(site.classifier)
    site.use(None)
    base_uar = held.uar(site.classifier)
    outcomes = {o.call.name: o for o in site.score(calls)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="site-sim-") as tmp:
        for split in range(splits):
            verdict_side, scored_side = split_speakers(calls, split)
            pool = [outcomes[c.name] for c in calls if c.speaker in verdict_side]
            order = np.random.default_rng(1000 + split).permutation(len(pool))
            scored = site.score([c for c in calls if c.speaker in scored_side])
            scored_z = [tap.windows(o)[1] for o in scored]
            for k in ks:
                used = [pool[i] for i in order[:k]]
                row: dict[str, Any] = {"split": split, "k": k, "verdict_calls": len(used), "verdict_speakers": verdict_side,
                                       "scored_speakers": scored_side, "refit": "-", "heldout_uar_before": base_uar,
                                       "heldout_uar": base_uar}
                outcomes_k = scored
                if used:
                    model_dir = Path(tmp) / f"s{split}-k{k}"
                    row["refit"] = _refit(site, used, tap, model_dir, split)
                    if row["refit"] == "improved":
                        site.use(model_dir)
                        row["heldout_uar"] = held.uar(site.classifier)
                        outcomes_k = [site.rescore(o, z) for o, z in zip(scored, scored_z)]
                        site.use(None)
                row.update(call_metrics(outcomes_k))
                log(f"split {split} k {k} ({len(used)} calls): refit {row['refit']}; "
                    + ", ".join(f"{f} {row[f]}" for f in FIGURES) + f", held-out UAR {row['heldout_uar']:.3f}")
                rows.append(row)
    return rows


def _refit(site: Site, used: Sequence[CallOutcome], tap: FeatureTap, out: Path, seed: int) -> str:
    """Refit on the verdicts of ``used``: each window as the head saw it when the verdict was given (standardised by
    the line adapter of that moment; given to the refit relative to the training statistics), callers = speakers."""
    model = site.classifier.model
    feats, upset, names, callers = [], [], [], []
    for o in used:
        labels = verdict_labels(o)
        keep = labels >= 0
        z = tap.windows(o)[1][keep]
        feats.append(z * model.feature_std.numpy() + model.feature_mean.numpy())
        upset.append(labels[keep] == 1)
        names += [o.call.name] * int(keep.sum())
        callers += [o.call.speaker] * int(keep.sum())
    verdicts = SiteVerdicts(np.concatenate(feats), np.concatenate(upset), np.array(names), np.array(callers))
    try:
        report = refit(Path(site.classifier.model_dir), verdicts, out, seed=seed)
    except ValueError as exc:
        return f"none ({exc})"
    return "improved" if report.improved else "not improved"


def summary(corpus: str, rows: Sequence[dict]) -> list[str]:
    """Markdown rows: per k, the mean over splits (and how many refits the site would have switched to)."""
    out = []
    for k in sorted({r["k"] for r in rows}):
        of_k = [r for r in rows if r["k"] == k]
        mean = lambda key: _mean([r[key] for r in of_k])  # noqa: E731
        calls = sorted({r["verdict_calls"] for r in of_k})
        switched = sum(r["refit"] == "improved" for r in of_k)
        cells = [corpus, str(k), "/".join(map(str, calls)), f"{switched}/{len(of_k)}",
                 *(_cell(mean(f)) for f in FIGURES), f"{mean('heldout_uar_before'):.3f} → {mean('heldout_uar'):.3f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


HEADER = ("| corpus | k | verdict calls used | refits switched to | calm: alert % | calm→angry: alerted % | median delay s "
          "| angry from start ≤ 15 s % | CREMA-D held-out UAR before → after |\n|---|---|---|---|---|---|---|---|---|")


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
