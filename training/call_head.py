"""The encoder head for calls: trained on CREMA-D's training actors for what an agent must be warned about.

``emovoice-train head`` fits a head on cached Whisper features (:class:`training.train_whisper.FeatureCache`) of the
shipped fold's training actors minus the call-level validation actors (:mod:`training.heldout`), with a label map
chosen for calls: by default NEGATIVE is *anger* alone (an upset caller), NEUTRAL is neutral speech, POSITIVE is
happiness; sadness, fear and disgust - which read as calm, low-energy speech on a phone line and are not what a call
centre escalates - are left out. *Machine speech* (:mod:`training.machine_speech`: the training halves of recorded
prompt packages, espeak-ng's training voices) can be added as NEUTRAL windows: a recorded or synthesised voice is calm
by construction. The epoch is chosen on the validation actors' clips; the operating point and policy are then chosen
on their whole calls (``emovoice-train calls --choose``) and written to the model's ``escalation.json``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.corpora import CLASSES
from training.heldout import cremad_split
from training.machine_speech import training_windows
from training.loop import Log, TrainSettings
from training.calibration import fit_temperature
from training.train_whisper import FeatureCache, Head, HeadOptions, fit_head, select, site_stats

UPSET_LABELS: dict[str, str | None] = {"ANG": "NEGATIVE", "DIS": "NEGATIVE", "NEU": "NEUTRAL", "HAP": "POSITIVE",
                                       "SAD": None, "FEA": None}
ANGER_LABELS: dict[str, str | None] = {**UPSET_LABELS, "DIS": None}  # NEGATIVE is anger alone


def relabel(emotions: np.ndarray, label_map: Mapping[str, str | None]) -> np.ndarray:
    """Class index per clip under ``label_map`` (-1: left out)."""
    return np.array([CLASSES.index(label_map[e]) if label_map.get(e) else -1 for e in emotions])


@dataclass(frozen=True)
class _Window:
    path: Path


@dataclass
class MachineSpeech:
    """Machine-speech windows in the shape :class:`FeatureCache` encodes (keyed by their samples)."""

    name: str
    utts: list[_Window]
    store: list[np.ndarray]

    @classmethod
    def build(cls, sources: Sequence[str], seconds: float, seed: int) -> MachineSpeech:
        """``seconds`` of each source's training side, as 3 s windows."""
        store = [w for s in sources for w in training_windows(s, seconds, seed=seed)]
        keys = [Path("machine-speech", hashlib.sha1(w.tobytes()).hexdigest()[:16]) for w in store]
        return cls("machine speech " + "+".join(sources), [_Window(k) for k in keys], store)


def actor_clips(data, label_map: Mapping[str, str | None]  # noqa: ANN001
                ) -> tuple[dict[str, list[str]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shipped fold's actors, each clip's class (-1: left out), every clip of the training actors, and the
    training and validation actors' labelled clips."""
    split = cremad_split(data.utts)
    speakers = np.array([u.speaker for u in data.utts])
    y = relabel(np.array([u.emotion for u in data.utts]), label_map)
    actors = np.flatnonzero(np.isin(speakers, split["train"]))
    va = np.flatnonzero(np.isin(speakers, split["val"]) & (y >= 0))
    return split, y, actors, actors[y[actors] >= 0], va


def replay_windows(data, cache: FeatureCache, opts: HeadOptions,  # noqa: ANN001
                   label_map: Mapping[str, str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a site refit replays (:func:`emovoice_daemon.learning.refit.write_replay`): the CREMA-D training actors'
    windows the head trains on (every training condition, unnormalised; machine speech is not replayed), and as guard
    windows the validation actors' telephony clips (never fitted on); their classes, and which are guard windows."""
    _, y, _, tr, va = actor_clips(data, label_map)
    feats = [select(cache.get(data, c), opts.layers)[tr] for c in opts.train_conditions]
    feats.append(select(cache.get(data, "telephony"), opts.layers)[va])
    return np.concatenate(feats), *replay_layout(y, tr, va, len(opts.train_conditions))


def replay_layout(y: np.ndarray, tr: np.ndarray, va: np.ndarray, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes and guard flags of a replay set's windows: the training clips ``tr`` in each of ``copies`` conditions,
    then the validation clips ``va`` (the guard windows)."""
    return np.r_[np.tile(y[tr], copies), y[va]], np.r_[np.zeros(len(tr) * copies, bool), np.ones(len(va), bool)]


class Teacher:
    """Trained encoder heads (model directories) whose mean probabilities a student head learns to reproduce: one
    head, or an ensemble of heads trained with different seeds (steadier than any one of them)."""

    def __init__(self, model_dirs: Sequence[Path]) -> None:
        from emovoice_daemon.scoring.models.whisper import EmoVoiceWhisperForAudioClassification

        self.models = [EmoVoiceWhisperForAudioClassification.from_pretrained(str(d)).eval() for d in model_dirs]
        self.name = " + ".join(str(d) for d in model_dirs)

    def probs(self, feats: np.ndarray) -> np.ndarray:
        """Mean P(class) for cached features (every hidden state the cache holds), each head standardised as trained."""
        with torch.no_grad():
            return np.mean([torch.softmax(m.classify_trained(torch.from_numpy(select(feats, m.config.layers))), dim=1)
                            .numpy() for m in self.models], axis=0)


def _targets(cached: Mapping[str, np.ndarray], hard: np.ndarray,
             teacher: Teacher | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which windows train and, per condition, on what: the labelled ones on their class, or with a ``teacher``
    every window on its probabilities (the clips a label map leaves out too: the teacher says what they sound like)."""
    if teacher is None:
        keep = hard >= 0
        return keep, {c: hard[keep] for c in cached}
    return np.ones(len(hard), bool), {c: teacher.probs(f).astype(np.float32) for c, f in cached.items()}


def train_call_head(data, cache: FeatureCache, opts: HeadOptions, label_map: Mapping[str, str | None],  # noqa: ANN001
                    settings: TrainSettings, seed: int, log: Log, machine: MachineSpeech | None = None,
                    teacher: Teacher | None = None) -> Head:
    """Fit on the training actors' ``opts.train_conditions`` (standardised by the training statistics: the daemon's
    ``adapt: false``) and ``machine`` speech as NEUTRAL under the same conditions - or, distilled, on a ``teacher``'s
    probabilities for all of them - and choose the epoch and temperature on the validation actors' telephony clips."""
    split, y, actors, _, va = actor_clips(data, label_map)
    cached = {c: cache.get(data, c)[actors] for c in opts.train_conditions}
    if machine is not None and machine.store:
        cached = {c: np.concatenate([f, cache.get(machine, c)]) for c, f in cached.items()}
    hard = np.r_[y[actors], np.full(len(machine.store) if machine else 0, CLASSES.index("NEUTRAL"))]
    keep, targets = _targets(cached, hard, teacher)
    feats = {c: select(f[keep], opts.layers) for c, f in cached.items()}
    corpus = int(keep[: len(actors)].sum())  # kept rows start with CREMA-D's: the statistics leave machine speech out
    mean, std = site_stats(np.concatenate([f[:corpus] for f in feats.values()]))
    z = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    x_val = z(select(cache.get(data, "telephony"), opts.layers)[va])
    log(f"head: layers {list(opts.layers)}, {len(actors)} training-actor clips x {len(opts.train_conditions)} "
        f"conditions ({len(split['train'])} actors), {len(machine.store) if machine else 0} machine-speech windows"
        f"{f', distilled from {teacher.name}' if teacher else ' as NEUTRAL, labelled clips only'}, "
        f"{len(va)} validation clips ({len(split['val'])} actors)")
    head = fit_head(np.concatenate([z(f) for f in feats.values()]), np.concatenate(list(targets.values())),
                    x_val, y[va], opts.head_hidden, settings, seed, log)
    with torch.no_grad():
        val_logits = head(torch.from_numpy(x_val)).numpy()
    return Head(head, mean, std, fit_temperature(val_logits, y[va]))
