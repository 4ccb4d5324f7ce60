"""Line conditions: calls with no upset human on them, and the impairments a real line puts over a caller.

*No-caller calls* (none of them should raise an alert): hold music and Asterisk's own recorded prompts (Debian's
``asterisk-moh-opsound-wav`` and ``asterisk-core-sounds-en-wav``, read from where they install), music synthesised
here (chords, bass, arpeggio), IVR phrases in espeak-ng voices, call-progress and
fax tones (DTMF, ringback, busy, SIT, fax CNG and CED), comfort noise, and office babble (calm speech of speakers
mixed low, as from the next desk).

*Impairments* of a caller's audio: G.711 A-law, GSM 06.10 (through sox), G.722 on a wideband leg then µ-law at
8 kHz (through ffmpeg), packet loss with frame-repeat
concealment, clipping, and levels 20 dB down or up.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from emovoice_daemon.scoring.resample import resample
from training.augment import TELEPHONE_RATE, add_noise, g711_roundtrip
from training.calls import Call
from training.machine_speech import ESPEAK_EVAL_VOICES, espeak_clips, prompt_files, read_8k, sequence

RATE = TELEPHONE_RATE
MOH_DIR = Path("/usr/share/asterisk/moh")
CALL_S = 90.0


def _tone(freqs: Sequence[float], seconds: float, level: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level / len(freqs) * sum(np.sin(2 * np.pi * f * t) for f in freqs)).astype(np.float32)


def _cadence(freqs: Sequence[float], on_s: float, off_s: float, seconds: float) -> np.ndarray:
    """A tone switched on and off (ringback, busy, fax CNG) for ``seconds``."""
    cycle = np.concatenate([_tone(freqs, on_s), np.zeros(int(off_s * RATE), np.float32)])
    return np.tile(cycle, int(np.ceil(seconds * RATE / len(cycle))))[: int(seconds * RATE)]


def dtmf_digits(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Random DTMF digits, 100 ms on / 100 ms off, in bursts with pauses."""
    rows, cols = (697, 770, 852, 941), (1209, 1336, 1477)
    parts, total = [], 0
    while total < seconds * RATE:
        for _ in range(int(rng.integers(4, 12))):
            parts += [_tone((rng.choice(rows), rng.choice(cols)), 0.1), np.zeros(int(0.1 * RATE), np.float32)]
        parts.append(np.zeros(int(rng.uniform(1, 3) * RATE), np.float32))
        total = sum(len(p) for p in parts)
    return np.concatenate(parts)[: int(seconds * RATE)]


def sit_tones(seconds: float) -> np.ndarray:
    """Special information tones (913.8, 1370.6, 1776.7 Hz, 380 ms each), then 2 s of silence, repeated."""
    cycle = np.concatenate([*(_tone((f,), 0.38) for f in (913.8, 1370.6, 1776.7)), np.zeros(2 * RATE, np.float32)])
    return np.tile(cycle, int(np.ceil(seconds * RATE / len(cycle))))[: int(seconds * RATE)]


def comfort_noise(rng: np.random.Generator, seconds: float, dbfs: float = -55.0) -> np.ndarray:
    x = add_noise(np.zeros(int(seconds * RATE), np.float32) + 1e-9, 0.0, rng, pink=True)
    return (x / np.sqrt(np.mean(x * x)) * 10 ** (dbfs / 20)).astype(np.float32)


def _loop(x: np.ndarray, seconds: float) -> np.ndarray:
    return np.tile(x, int(np.ceil(seconds * RATE / max(len(x), 1))))[: int(seconds * RATE)]


def _note(freq: float, seconds: float, decay: float) -> np.ndarray:
    """A tone with three decaying harmonics, a 10 ms attack and an exponential decay (``decay`` per second)."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(a * np.sin(2 * np.pi * k * freq * t) for k, a in ((1, 1.0), (2, 0.5), (3, 0.25)) if k * freq < RATE / 2)
    return (x * np.minimum(t / 0.01, 1.0) * np.exp(-decay * t)).astype(np.float32)


def synth_music(rng: np.random.Generator, seconds: float, dbfs: float = -20.0) -> np.ndarray:
    """Music made here, in no sound package: I-V-vi-IV chords in a random key and tempo, a bass line and an
    arpeggio over them."""
    root = 220.0 * 2 ** (int(rng.integers(12)) / 12)
    bar = float(rng.uniform(1.6, 2.6))
    notes = lambda steps, octave: [root * 2 ** (octave + s / 12) for s in steps]  # noqa: E731
    bars = []
    for chord in ((0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)):
        pad = sum(_note(f, bar, 0.6) for f in notes(chord, 0)) * 0.3 + _note(notes(chord[:1], -1)[0], bar, 1.5)
        step = bar / 8
        arp = np.concatenate([_note(f, step, 6.0) for f in notes(chord, 1) * 3][:8])
        bars.append(pad + 0.5 * np.pad(arp, (0, len(pad) - len(arp))))
    x = _loop(np.concatenate(bars), seconds)
    return (x / np.sqrt(np.mean(x * x)) * 10 ** (dbfs / 20)).astype(np.float32)


def babble(calm_clips: Sequence[np.ndarray], rng: np.random.Generator, seconds: float, talkers: int = 3,
           dbfs: float = -38.0) -> np.ndarray:
    """Several calm talkers at once, mixed low: an office behind an otherwise silent line."""
    n = int(seconds * RATE)
    mix = np.zeros(n, np.float32)
    for _ in range(talkers):
        voice = np.concatenate([calm_clips[int(i)] for i in rng.integers(len(calm_clips), size=int(seconds) + 5)])
        mix += np.roll(_loop(voice, seconds), int(rng.integers(n)))
    return (mix / np.sqrt(np.mean(mix * mix) + 1e-12) * 10 ** (dbfs / 20)).astype(np.float32)


def no_caller_calls(calm_clips: Sequence[np.ndarray], seed: int = 0, moh_dir: Path = MOH_DIR,
                    prompts_root: Path | None = None, seconds: float = CALL_S) -> list[Call]:
    """Every no-caller call this machine can build (hold music and prompts only where their packages are installed,
    espeak-ng voices only where it is). Prompts are the evaluation half of Asterisk's English files and the voices
    espeak-ng's evaluation voices: never what the call head trained on (:mod:`training.machine_speech`)."""
    rng = np.random.default_rng(seed)
    audio: dict[str, np.ndarray] = {}
    for f in sorted(moh_dir.glob("*.wav"))[:5] if moh_dir.is_dir() else []:
        audio[f"hold-music-{f.stem}"] = _loop(read_8k(f), seconds)
    for i in range(2):
        audio[f"synth-music-{i}"] = synth_music(rng, seconds)
    prompts = [read_8k(f) for f in prompt_files("en", True, prompts_root)]
    for i in range(5 if prompts else 0):
        audio[f"prompts-{i}"] = sequence(prompts, rng, seconds)
    if shutil.which("espeak-ng"):
        for i in range(2):
            audio[f"espeak-ivr-{i}"] = sequence(espeak_clips(ESPEAK_EVAL_VOICES, rng, 40), rng, seconds)
    audio.update({
        "dtmf": dtmf_digits(rng, seconds), "ringback": _cadence((440, 480), 2.0, 4.0, seconds),
        "busy": _cadence((480, 620), 0.5, 0.5, seconds), "sit": sit_tones(seconds),
        "fax-cng": _cadence((1100,), 0.5, 3.0, seconds), "fax-ced": _tone((2100,), seconds),
        "comfort-noise": comfort_noise(rng, seconds),
    })
    if calm_clips:
        audio["office-babble"] = babble(calm_clips, rng, seconds)
    return [Call(name, "line", "line", g711_roundtrip(np.clip(x, -1, 1), "ulaw"), None, seconds) for name, x in audio.items()]


def _same_length(y: np.ndarray, n: int) -> np.ndarray:
    """A codec's output cut or zero-padded to the ``n`` samples that went in."""
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def gsm_roundtrip(x: np.ndarray) -> np.ndarray:
    """GSM 06.10 full rate and back, through sox (libgsm)."""
    if shutil.which("sox") is None:
        raise RuntimeError("sox is not installed (apt install sox)")
    with tempfile.TemporaryDirectory() as tmp:
        src, gsm, back = (Path(tmp) / n for n in ("in.wav", "x.gsm", "out.wav"))
        sf.write(src, np.clip(x, -1, 1), RATE, subtype="PCM_16")
        subprocess.run(["sox", str(src), "-r", "8000", "-c", "1", str(gsm)], check=True, capture_output=True)
        subprocess.run(["sox", str(gsm), "-b", "16", str(back)], check=True, capture_output=True)
        y, _ = sf.read(back, dtype="float32")
    return _same_length(y, len(x))


def g722_roundtrip(x: np.ndarray) -> np.ndarray:
    """A wideband leg: 8 kHz audio up to 16 kHz, G.722 (64 kbit/s) and back through ffmpeg, then down to 8 kHz."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed (apt install ffmpeg)")
    wide = np.clip(np.rint(resample(np.clip(x, -1, 1), RATE, 16000) * 32767), -32768, 32767).astype("<i2")
    quiet = ["ffmpeg", "-hide_banner", "-loglevel", "error"]
    coded = subprocess.run([*quiet, "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "-", "-c:a", "g722", "-f", "g722", "-"],
                           input=wide.tobytes(), check=True, capture_output=True).stdout
    back = subprocess.run([*quiet, "-f", "g722", "-i", "-", "-f", "s16le", "-ar", "16000", "-ac", "1", "-"],
                          input=coded, check=True, capture_output=True).stdout
    y = resample(np.frombuffer(back, "<i2").astype(np.float32) / 32768.0, 16000, RATE)
    return _same_length(y, len(x))


def packet_loss(x: np.ndarray, rng: np.random.Generator, loss: float = 0.05, frame_s: float = 0.02) -> np.ndarray:
    """Lose ``loss`` of the 20 ms packets; each lost one is concealed by the previous frame at half level."""
    n = int(frame_s * RATE)
    y = x.copy()
    for i in np.flatnonzero(rng.random(len(x) // n) < loss):
        y[i * n:(i + 1) * n] = 0.5 * y[(i - 1) * n:i * n] if i else 0.0
    return y


IMPAIRMENTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "alaw": lambda x, rng: g711_roundtrip(np.clip(x, -1, 1), "alaw"),
    "gsm": lambda x, rng: gsm_roundtrip(x),
    "g722": lambda x, rng: g711_roundtrip(np.clip(g722_roundtrip(x), -1, 1), "ulaw"),
    "loss5": lambda x, rng: packet_loss(x, rng),
    "clipped": lambda x, rng: np.clip(x * 4.0, -0.25, 0.25) * 3.0,
    "minus20db": lambda x, rng: x * 0.1,
    "plus20db": lambda x, rng: np.clip(x * 10.0, -1.0, 1.0),
}


def impaired(calls: Sequence[Call], name: str, seed: int = 0) -> list[Call]:
    """The same calls under one impairment (names get a ``+name`` suffix)."""
    rng = np.random.default_rng(seed)
    fn = IMPAIRMENTS[name]
    return [Call(f"{c.name}+{name}", c.speaker, c.kind, fn(c.audio, rng).astype(np.float32), c.onset_s, c.calm_until_s)
            for c in calls]
