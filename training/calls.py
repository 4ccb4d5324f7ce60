"""Whole calls built from a labelled corpus, per held-out speaker: what an agent hears, not single clips.

Each call is one speaker's clips, in a seeded random order, separated by pauses of 0.3-1.5 s (and now and
then a longer 2-4 s silence), under one line condition applied to the whole call, so the pauses carry the
line's noise. A speaker with fewer clips than a call needs has them replayed (in a new order). Kinds:

* ``calm``: at least ``calm_s`` of neutral speech - no escalation should be raised;
* ``calm_angry``: at least ``lead_s`` of neutral speech, then at least ``angry_s`` of anger (``onset_s`` is
  where the first angry clip starts);
* ``angry``: anger from the first second (``onset_s`` = 0);
* ``calm_happy``: neutral, then happy speech - no escalation should be raised either.

Only the corpus' *neutral* (and RAVDESS *calm*) clips make calm speech and only its *anger* clips make angry
speech: sadness or fear is not what an agent is warned about, so those clips are not used.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.augment import TELEPHONE_RATE, eval_condition
from training.corpora import Utterance

CALM_EMOTIONS = frozenset({"neu", "neutral", "calm"})
ANGRY_EMOTIONS = frozenset({"ang", "angry", "anger"})
HAPPY_EMOTIONS = frozenset({"hap", "happy", "joy", "happiness"})
KINDS = ("calm", "calm_angry", "angry", "calm_happy")
MIN_CLIPS = 3  # a speaker needs this many distinct clips of an emotion to make a stretch of it


@dataclass(frozen=True)
class CallPlan:
    """How long each kind of call and its stretches are, in seconds."""

    calm_s: float = 60.0
    lead_s: float = 20.0
    angry_s: float = 30.0
    happy_s: float = 20.0


@dataclass
class Call:
    """One built call: 8 kHz float32 audio and where its anger starts (None: no anger)."""

    name: str
    speaker: str
    kind: str
    audio: np.ndarray
    onset_s: float | None
    calm_until_s: float  # end of the opening calm stretch (the whole call for calm calls)


def emotion_group(emotion: str) -> str | None:
    """``calm``, ``angry``, ``happy`` or None (not used in calls)."""
    e = emotion.lower()
    for name, group in (("calm", CALM_EMOTIONS), ("angry", ANGRY_EMOTIONS), ("happy", HAPPY_EMOTIONS)):
        if e in group:
            return name
    return None


def _pause(rng: np.random.Generator) -> int:
    seconds = rng.uniform(2.0, 4.0) if rng.random() < 0.1 else rng.uniform(0.3, 1.5)
    return int(seconds * TELEPHONE_RATE)


def _stretch(clips: Sequence[np.ndarray], seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Clips and pauses adding up to at least ``seconds``; clips replayed in a new order when they run out."""
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * TELEPHONE_RATE:
        for i in rng.permutation(len(clips)):
            parts += [clips[i], np.zeros(_pause(rng), np.float32)]
            total += len(clips[i]) + len(parts[-1])
            if total >= seconds * TELEPHONE_RATE:
                break
    return parts


def build_call(name: str, speaker: str, kind: str, clips: dict[str, list[np.ndarray]], plan: CallPlan,
               condition: str, seed: int) -> Call:
    """One call of ``kind`` from a speaker's clips by emotion group, under ``condition`` (clean/telephony)."""
    rng = np.random.default_rng(seed)
    lead = [np.zeros(int(rng.uniform(0.5, 1.5) * TELEPHONE_RATE), np.float32)]
    first_s = {"calm": plan.calm_s, "angry": 0.0}.get(kind, plan.lead_s)
    opening = _stretch(clips["calm"], first_s, rng) if first_s else []
    tail_group = {"calm_angry": "angry", "angry": "angry", "calm_happy": "happy"}.get(kind)
    tail = _stretch(clips[tail_group], plan.happy_s if tail_group == "happy" else plan.angry_s, rng) if tail_group else []
    head = np.concatenate(lead + opening)
    audio = np.concatenate([head, *tail])
    onset = len(head) / TELEPHONE_RATE if tail_group == "angry" else None
    line = eval_condition(audio, TELEPHONE_RATE, condition, seed) if condition != "clean" else audio
    return Call(name, speaker, kind, line.astype(np.float32), onset, len(head) / TELEPHONE_RATE)


def speaker_clips(utts: Sequence[Utterance], waves: Sequence[np.ndarray]) -> dict[str, dict[str, list[np.ndarray]]]:
    """speaker -> emotion group -> that speaker's clips (8 kHz float32)."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for u, w in zip(utts, waves):
        group = emotion_group(u.emotion)
        if group is not None:
            out.setdefault(u.speaker, {"calm": [], "angry": [], "happy": []})[group].append(np.asarray(w, np.float32))
    return out


def needs(kind: str) -> tuple[str, ...]:
    """The emotion groups a kind of call is made of."""
    return {"calm": ("calm",), "calm_angry": ("calm", "angry"), "angry": ("angry",), "calm_happy": ("calm", "happy")}[kind]


def build_calls(utts: Sequence[Utterance], waves: Sequence[np.ndarray], speakers: Sequence[str],
                kinds: Sequence[str] = KINDS, calls_per_kind: int = 20, plan: CallPlan = CallPlan(),
                condition: str = "telephony", seed: int = 0) -> list[Call]:
    """For each kind, at least ``calls_per_kind`` calls spread evenly over the speakers who have the clips for it
    (a speaker's further calls use other clip orders and pauses)."""
    by_speaker = speaker_clips(utts, waves)
    calls = []
    for k_i, kind in enumerate(kinds):
        able = [s for s in sorted(set(speakers)) if s in by_speaker and all(len(by_speaker[s][g]) >= MIN_CLIPS for g in needs(kind))]
        per_speaker = -(-calls_per_kind // len(able)) if able else 0
        for s_i, speaker in enumerate(able):
            clips = by_speaker[speaker]
            for n in range(per_speaker):
                name = f"{speaker.replace(':', '-')}-{kind}-{n}"
                calls.append(build_call(name, speaker, kind, clips, plan, condition, seed * 1_000_003 + s_i * 1009 + k_i * 101 + n))
    return calls
