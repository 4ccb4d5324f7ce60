"""Speaker-independent splits: whole speakers go to one side, balanced by sex. Never split by clip."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.corpora import Utterance


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
