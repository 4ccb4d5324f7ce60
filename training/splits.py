"""Speaker-independent splits: whole speakers go to one side, balanced by sex. Never split by clip."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.corpora import Utterance


class TooFewSpeakers(ValueError):
    """The corpus has fewer speakers than the folds and validation hold-out need."""


def min_speakers(n_folds: int, val_fraction: float) -> int:
    """Fewest speakers for ``n_folds`` folds whose every training side can still hold out ``val_fraction`` of its
    speakers (:func:`holdout_speakers` deals them into ``round(1 / val_fraction)`` groups, one speaker at least each)."""
    need = max(2, round(1 / val_fraction))
    n = max(n_folds, need)
    while n - -(-n // n_folds) < need:  # the largest fold holds ceil(n / n_folds) speakers
        n += 1
    return n


def check_speakers(utts: Sequence[Utterance], n_folds: int, val_fraction: float) -> None:
    """Raise :class:`TooFewSpeakers` with what to change when the corpus cannot fill the folds and hold-outs."""
    have, need = len({u.speaker for u in utts}), min_speakers(n_folds, val_fraction)
    if have < need:
        raise TooFewSpeakers(
            f"{have} speakers (callers) are too few for evaluation.folds {n_folds} with val_fraction {val_fraction}: "
            f"each fold trains on the other folds' speakers and holds out 1 in {max(2, round(1 / val_fraction))} of "
            f"them, so {need} speakers are needed; add speakers, or lower evaluation.folds / raise "
            f"evaluation.val_fraction (folds 2 with val_fraction 0.5 needs {min_speakers(2, 0.5)})")


def assign_speaker_folds(utts: Sequence[Utterance], n_folds: int, seed: int) -> dict[str, int]:
    """Map each speaker to a fold; within each sex, speakers are shuffled and dealt round-robin."""
    if n_folds < 2:
        raise ValueError("need at least 2 folds")
    sex_of = {u.speaker: u.sex or "unknown" for u in utts}
    if len(sex_of) < n_folds:
        raise ValueError(f"{len(sex_of)} speakers cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    dealt = 0
    for sex in sorted(set(sex_of.values())):
        speakers = sorted(s for s, x in sex_of.items() if x == sex)
        for s in rng.permutation(speakers):
            folds[str(s)] = dealt % n_folds
            dealt += 1
    return folds


def speaker_folds(utts: Sequence[Utterance], n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group k-fold over speakers: ``[(train_indices, test_indices), ...]``."""
    fold_of = assign_speaker_folds(utts, n_folds, seed)
    fold = np.array([fold_of[u.speaker] for u in utts])
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds)]


def holdout_speakers(utts: Sequence[Utterance], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``fraction`` of the speakers (sex-balanced): ``(train_indices, held_out_indices)``."""
    return speaker_folds(utts, max(2, round(1 / fraction)), seed)[0]
