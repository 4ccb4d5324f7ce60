"""Which speakers a model never trained on, per corpus: the speakers call-level figures are measured on.

CREMA-D: the shipped models' fold-1 test actors (group 4-fold over actors, sex-balanced, seed 0), or the
validation actors held out of its training side (``VAL_FRACTION``), on which thresholds and designs are chosen.
Every other corpus is evaluation only: all its speakers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training.audio import AudioStore
from training.corpora import Utterance, load_corpus
from training.splits import holdout_speakers, speaker_folds

FOLDS, SHIPPED_FOLD, SEED = 4, 0, 0
VAL_FRACTION = 0.2  # of the training side's actors: the call-level validation speakers


def cremad_split(utts: Sequence[Utterance]) -> dict[str, list[str]]:
    """``train``/``val``/``test`` CREMA-D actors of the shipped fold."""
    train_idx, test_idx = speaker_folds(utts, FOLDS, SEED)[SHIPPED_FOLD]
    side = [utts[i] for i in train_idx]
    tr, va = holdout_speakers(side, VAL_FRACTION, SEED + SHIPPED_FOLD)
    names = lambda idx, pool: sorted({pool[i].speaker for i in idx})  # noqa: E731
    return {"train": names(tr, side), "val": names(va, side), "test": names(test_idx, utts)}


def corpus_speakers(kind: str, utts: Sequence[Utterance], which: str) -> list[str]:
    """The speakers to build calls for: CREMA-D's ``test`` or ``val`` actors, any other corpus' speakers."""
    if kind == "cremad":
        return cremad_split(utts)[which]
    return sorted({u.speaker for u in utts})


def load_call_corpus(kind: str, path: Path, cache_dir: str | None) -> tuple[list[Utterance], AudioStore]:
    """A corpus' clips of every emotion (calls pick neutral, angry and happy ones) and their 8 kHz audio."""
    if not path.is_dir():
        raise SystemExit(f"emovoice-train calls: {path}: no such corpus directory")
    utts = load_corpus(kind, path)
    return utts, AudioStore.load(utts, Path(cache_dir) if cache_dir else None)
