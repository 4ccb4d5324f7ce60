"""Decoding corpora once to 8 kHz float32 and caching the result on disk (outside the repo)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from training.augment import to_telephone_rate
from training.corpora import Utterance


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 in [-1, 1]."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


class AudioStore:
    """All clips of a corpus at 8 kHz, held in one array; indexable like a list."""

    def __init__(self, waves: Sequence[np.ndarray]) -> None:
        lengths = np.array([len(w) for w in waves], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.data = np.concatenate(waves).astype(np.float32) if waves else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def load(cls, utts: Sequence[Utterance], cache_dir: Path | None = None) -> AudioStore:
        """Decode ``utts`` to 8 kHz (anti-aliased), reusing a cache keyed by the file list and sizes."""
        key = hashlib.sha1("\n".join(f"{u.path}:{u.path.stat().st_size}" for u in utts).encode()).hexdigest()[:16]
        cache = cache_dir / f"audio-8k-{key}.npz" if cache_dir else None
        if cache is not None and cache.exists():
            with np.load(cache) as z:
                store = cls([])
                store.offsets, store.data = z["offsets"], z["data"]
                return store
        store = cls([to_telephone_rate(*read_audio(u.path)) for u in utts])
        if cache is not None:
            _write_atomically(cache, offsets=store.offsets, data=store.data)
        return store


def _write_atomically(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to a temporary file of this process's own, then renamed: loads sharing a cache never clash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def center_window(x: np.ndarray, samples: int) -> np.ndarray:
    """The central ``samples`` of ``x`` (all of it when shorter): the daemon scores windows of this size."""
    if len(x) <= samples:
        return x
    start = (len(x) - samples) // 2
    return x[start : start + samples]
