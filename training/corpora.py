"""Corpus loaders: each returns :class:`Utterance` records with a 3-class label and a speaker id.

Default label tables (override per corpus with ``label_map`` in the YAML config):

* anger, disgust, fear, sadness, frustration -> NEGATIVE. Sadness is negative valence, and a sad
  or distressed caller is someone a supervisor should hear about, so it goes with the escalation class.
* neutral and calm -> NEUTRAL. Calm is low-arousal, non-negative speech: exactly the ordinary call.
* happiness, friendliness and *pleasant* surprise (TESS "ps") -> POSITIVE.
* RAVDESS "surprised" -> excluded (``None``). Surprise is valence-ambiguous (good or bad news) and the
  corpus does not say which; mapping it either way would add label noise. Set it in ``label_map`` to use it.
* LEGOv2 "garbage" (not speech / unusable) -> excluded.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

NEGATIVE, NEUTRAL, POSITIVE = "NEGATIVE", "NEUTRAL", "POSITIVE"
CLASSES = (NEGATIVE, NEUTRAL, POSITIVE)
AUDIO_SUFFIXES = (".wav", ".flac")

CREMAD_LABELS: dict[str, str | None] = {
    "ANG": NEGATIVE, "DIS": NEGATIVE, "FEA": NEGATIVE, "SAD": NEGATIVE, "NEU": NEUTRAL, "HAP": POSITIVE,
}
RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
RAVDESS_LABELS: dict[str, str | None] = {
    "neutral": NEUTRAL, "calm": NEUTRAL, "happy": POSITIVE, "sad": NEGATIVE,
    "angry": NEGATIVE, "fearful": NEGATIVE, "disgust": NEGATIVE, "surprised": None,
}
TESS_LABELS: dict[str, str | None] = {
    "angry": NEGATIVE, "disgust": NEGATIVE, "fear": NEGATIVE, "sad": NEGATIVE, "neutral": NEUTRAL, "happy": POSITIVE, "ps": POSITIVE,
}
LEGO_LABELS: dict[str, str | None] = {
    "angry": NEGATIVE, "slightly angry": NEGATIVE, "very angry": NEGATIVE, "frustrated": NEGATIVE,
    "slightly frustrated": NEGATIVE, "very frustrated": NEGATIVE,
    "non-angry": NEUTRAL, "neutral": NEUTRAL, "friendly": POSITIVE, "garbage": None,
}
IDENTITY_LABELS: dict[str, str | None] = {c: c for c in CLASSES}


@dataclass(frozen=True)
class Utterance:
    """One labelled clip."""

    path: Path
    label: str
    emotion: str
    speaker: str
    corpus: str
    sex: str | None = None


def _map(emotion: str, table: Mapping[str, str | None], where: Path) -> str | None:
    if emotion not in table:
        raise ValueError(f"{where}: emotion {emotion!r} is not in the label table {sorted(table)}")
    label = table[emotion]
    if label is not None and label not in CLASSES:
        raise ValueError(f"label table maps {emotion!r} to {label!r}, not one of {CLASSES}")
    return label


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _table(default: Mapping[str, str | None], override: Mapping[str, str | None] | None) -> dict[str, str | None]:
    return {**default, **(override or {})}


def load_cremad(root: Path, label_map: Mapping[str, str | None] | None = None) -> list[Utterance]:
    """CREMA-D: ``AudioWAV/<actor>_<sentence>_<EMO>_<level>.(wav|flac)``; sex from ``metadata/VideoDemographics.csv``."""
    table = _table(CREMAD_LABELS, label_map)
    sex: dict[str, str] = {}
    demo = root / "metadata" / "VideoDemographics.csv"
    if demo.exists():
        with demo.open(newline="") as f:
            sex = {row["ActorID"]: row["Sex"].lower() for row in csv.DictReader(f)}
    out = []
    for path in _audio_files(root / "AudioWAV"):
        parts = path.stem.split("_")
        if len(parts) != 4:
            raise ValueError(f"{path}: not a CREMA-D file name")
        actor, _, emotion, _ = parts
        label = _map(emotion, table, path)
        if label is not None:
            out.append(Utterance(path, label, emotion, f"cremad:{actor}", "cremad", sex.get(actor)))
    return out


def load_ravdess(root: Path, label_map: Mapping[str, str | None] | None = None) -> list[Utterance]:
    """RAVDESS: ``Actor_NN/MM-VV-EE-II-SS-RR-AA.(wav|flac)``; odd actors are male."""
    table = _table(RAVDESS_LABELS, label_map)
    out = []
    for path in _audio_files(root):
        fields = path.stem.split("-")
        if len(fields) != 7 or fields[2] not in RAVDESS_EMOTIONS:
            raise ValueError(f"{path}: not a RAVDESS file name")
        emotion, actor = RAVDESS_EMOTIONS[fields[2]], fields[6]
        label = _map(emotion, table, path)
        if label is not None:
            sex = "male" if int(actor) % 2 else "female"
            out.append(Utterance(path, label, emotion, f"ravdess:{actor}", "ravdess", sex))
    return out


_TESS_RE = re.compile(r"^(?P<speaker>[A-Za-z]+)_(?P<word>[A-Za-z]+)_(?P<emotion>[A-Za-z_]+)$")


def load_tess(root: Path, label_map: Mapping[str, str | None] | None = None) -> list[Utterance]:
    """TESS: ``<OAF|YAF>_<word>_<emotion>.wav`` (``ps`` = pleasant surprise); both speakers are female."""
    table = _table(TESS_LABELS, label_map)
    out = []
    for path in _audio_files(root):
        m = _TESS_RE.match(path.stem)
        if not m:
            raise ValueError(f"{path}: not a TESS file name")
        emotion = m["emotion"].lower()
        emotion = "ps" if emotion.startswith("pleasant") else emotion
        label = _map(emotion, table, path)
        if label is not None:
            out.append(Utterance(path, label, emotion, f"tess:{m['speaker'].upper()}", "tess", "female"))
    return out


def load_lego(
    root: Path,
    label_map: Mapping[str, str | None] | None = None,
    table_file: str = "interactions.csv",
    audio_column: str = "audiofile",
    emotion_column: str = "emotionalstate",
    call_column: str = "callid",
) -> list[Utterance]:
    """LEGOv2 (Let's Go calls): one row per exchange in ``interactions.csv`` with its EmotionalState.

    Column names are matched case-insensitively and are configurable; the caller (call id) is the speaker.
    Rows without audio or with an excluded label are skipped.
    """
    table = _table(LEGO_LABELS, label_map)
    out = []
    with (root / table_file).open(newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
            audio, emotion = row.get(audio_column, ""), row.get(emotion_column, "").lower()
            if not audio or not emotion:
                continue
            path = root / audio
            label = _map(emotion, table, path)
            if label is not None:
                out.append(Utterance(path, label, emotion, f"lego:{row[call_column]}", "lego"))
    return out


def load_folders(root: Path, label_map: Mapping[str, str | None] | None = None, speaker_pattern: str = r"^([^_]+)_") -> list[Utterance]:
    """A site's own calls: ``<label>/<speaker>/<clip>`` or ``<label>/<clip>`` (speaker from ``speaker_pattern``)."""
    table = _table(IDENTITY_LABELS, label_map)
    pattern = re.compile(speaker_pattern)
    out = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _map(label_dir.name, table, label_dir)
        for path in _audio_files(label_dir):
            if path.parent != label_dir:
                speaker = path.parent.name
            else:
                m = pattern.search(path.stem)
                if not m:
                    raise ValueError(f"{path}: no speaker id matches {speaker_pattern!r}")
                speaker = m.group(1)
            if label is not None:
                out.append(Utterance(path, label, label_dir.name, f"{root.name}:{speaker}", root.name))
    return out


def load_csv(csv_path: Path, label_map: Mapping[str, str | None] | None = None) -> list[Utterance]:
    """A site's own calls listed in a CSV with header ``path,label,speaker`` (paths relative to the CSV)."""
    table = _table(IDENTITY_LABELS, label_map)
    out = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            path = (csv_path.parent / row["path"]).resolve()
            label = _map(row["label"], table, path)
            if label is not None:
                out.append(Utterance(path, label, row["label"], f"{csv_path.stem}:{row['speaker']}", csv_path.stem))
    return out


def load_labelled(root: Path, label_map: Mapping[str, str | None] | None = None) -> list[Utterance]:
    """URDU, EMOVO (as in ../shared/data): ``labels.csv`` with ``path,speaker,emotion,label3``; ``label3`` is the
    3-class label (AMBIGUOUS, e.g. surprise, is excluded); ``label_map`` overrides it per emotion."""
    out = []
    with (root / "labels.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            path = root / row["path"]
            if label_map and row["emotion"] in label_map:
                label = _map(row["emotion"], label_map, path)
            else:
                label = row["label3"] if row["label3"] in CLASSES else None
            if label is not None:
                out.append(Utterance(path, label, row["emotion"], f"{root.name}:{row['speaker']}", root.name))
    return out


LOADERS: dict[str, Callable[..., list[Utterance]]] = {
    "cremad": load_cremad,
    "ravdess": load_ravdess,
    "tess": load_tess,
    "lego": load_lego,
    "folders": load_folders,
    "csv": load_csv,
    "urdu": load_labelled,
    "emovo": load_labelled,
}


def load_corpus(kind: str, path: Path, label_map: Mapping[str, str | None] | None = None, **options: str) -> list[Utterance]:
    """Load a corpus by loader name (see ``LOADERS``)."""
    if kind not in LOADERS:
        raise ValueError(f"unknown corpus kind {kind!r}; choose from {sorted(LOADERS)}")
    utts = LOADERS[kind](Path(path), label_map, **options)
    if not utts:
        raise ValueError(f"no labelled audio found for {kind} corpus at {path}")
    return utts
