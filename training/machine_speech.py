"""Machine speech: recorded IVR prompts and synthesised voices, calm by construction.

Sources: Asterisk's prompt packages (Debian ``asterisk-core-sounds-*-wav``: English and Spanish are one voice,
Allison; French, Italian and Russian are three others) and espeak-ng (a formant synthesiser, many languages and
voice variants). Each source is split so that what the call head trains on is never what the line-conditions
evaluation plays:

- every prompt package is split **by file** (a hash of the file name): the training half may be trained on, the
  evaluation half only scored;
- espeak-ng voices are split **by language and variant**: training voices speak other languages than English with
  other variants than the evaluation voices, which speak English (a held-out voice family).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from training.augment import TELEPHONE_RATE, to_telephone_rate

RATE = TELEPHONE_RATE
PROMPTS_ROOT = Path("/usr/share/asterisk/sounds")
PROMPT_LANGUAGES = ("en", "es", "fr", "it", "ru")
ESPEAK_TRAIN_VOICES = tuple(f"{lang}+{v}" for lang in ("de", "es", "fr-fr", "it", "nl", "pt", "pl", "sv")
                            for v in ("m1", "m2", "m3", "f1", "f2", "klatt"))
ESPEAK_EVAL_VOICES = ("en-us+m7", "en-gb+f4", "en-us+f5", "en-gb-x-rp+m5", "en-us+klatt3")
PHRASES = (
    "Thank you for calling. Your call is important to us.",
    "Please hold while we connect you to the next available agent.",
    "All of our representatives are currently busy.",
    "Your estimated waiting time is four minutes.",
    "To hear these options again, press the star key.",
    "The person you are calling is not available. Please leave a message after the tone.",
    "Your account balance is one hundred and twenty three dollars and forty cents.",
    "Please enter your customer number followed by the hash key.",
    "This call may be recorded for quality and training purposes.",
    "Our offices are open Monday to Friday, from nine in the morning until six in the evening.",
    "Press one for billing, two for technical support, or three for all other enquiries.",
    "You have three new messages. First message, received today at ten forty five.",
    "We are sorry, that is not a valid option.",
)


def evaluation_file(path: Path) -> bool:
    """Whether a prompt file belongs to the evaluation half (stable: a hash of its name, half the files)."""
    return hashlib.sha1(path.name.encode()).digest()[0] < 128


def prompt_files(language: str, evaluation: bool, root: Path | None = None) -> list[Path]:
    """One half of a prompt package's top-level files (none when the package is not installed)."""
    folder = (root or PROMPTS_ROOT) / language
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    return [f for f in files if evaluation_file(f) == evaluation]


def read_8k(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return to_telephone_rate(data.mean(axis=1), rate)


def espeak(text: str, voice: str, speed: int = 160, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (``lang+variant``), 8 kHz."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
                       check=True, capture_output=True)
        return read_8k(out)


def sequence(parts: Sequence[np.ndarray], rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Clips one after another with 0.2-0.8 s pauses, as an IVR or a voicemail greeting plays them."""
    out, total = [], 0
    while total < seconds * RATE:
        out += [parts[int(rng.integers(len(parts)))], np.zeros(int(rng.uniform(0.2, 0.8) * RATE), np.float32)]
        total += len(out[-2]) + len(out[-1])
    return np.concatenate(out)[: int(seconds * RATE)]


def espeak_clips(voices: Sequence[str], rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` random (voice, phrase) pairs, each at a random speed (130-200 words a minute) and pitch (30-70)."""
    pairs = [(v, p) for v in voices for p in PHRASES]
    picked = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    return [espeak(pairs[i][1], pairs[i][0], int(rng.integers(130, 200)), int(rng.integers(30, 70))) for i in picked]


def source_clips(source: str, evaluation: bool, rng: np.random.Generator, seconds: float) -> list[np.ndarray]:
    """Clips of one source for about ``seconds`` of audio: ``prompts-<language>`` (a package's half) or ``espeak``
    (training or evaluation voices)."""
    if source == "espeak":
        return espeak_clips(ESPEAK_EVAL_VOICES if evaluation else ESPEAK_TRAIN_VOICES, rng, int(seconds / 2.5) + 1)
    language = source.removeprefix("prompts-")
    if not source.startswith("prompts-") or language not in PROMPT_LANGUAGES:
        raise ValueError(f"unknown machine-speech source {source!r} (prompts-<{'|'.join(PROMPT_LANGUAGES)}> or espeak)")
    return [read_8k(f) for f in prompt_files(language, evaluation)]


def training_windows(source: str, seconds: float, window_s: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    """``seconds`` of a source's training half as a sequence, cut into daemon-sized windows."""
    rng = np.random.default_rng([seed, *source.encode()])
    clips = source_clips(source, False, rng, seconds)
    if not clips:
        language = source.removeprefix("prompts-")
        raise FileNotFoundError(f"no {source} files in {PROMPTS_ROOT / language} "
                                f"(apt install asterisk-core-sounds-{language}-wav)")
    x = sequence(clips, rng, seconds)
    n = int(window_s * RATE)
    return [x[i:i + n] for i in range(0, len(x) - n + 1, n)]
