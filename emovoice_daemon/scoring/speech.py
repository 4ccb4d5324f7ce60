"""Speech gate: does a window hold human speech, or only music, tones and noise?

The energy VAD (:mod:`.vad`) passes anything loud and periodic - hold music, ringback, DTMF. The gate runs
silero-vad's 8 kHz model (MIT; its weights ship inside the ``silero-vad`` wheel) on the newest hop of each window
due, a whole batch of legs at once, and remembers each hop's share of 32 ms chunks that hold speech. A window whose
hops hold less than ``min_share`` speech is *no evidence* (``nonspeech``): the model does not run on it and the
escalation policy never sees it.

The silero package is not imported (its import sets torch's thread count for the whole process); its TorchScript
file is loaded directly. Without the package, or with an unreadable file, the daemon logs one line and scores
without the gate.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

RATE = 8000
CHUNK = 256  # samples silero's 8 kHz model takes per step (32 ms)
WARM_S = 0.25  # audio before the hop that settles the model's state (its state starts afresh per batch)
SPEECH_P = 0.5  # a chunk is speech at or above this probability


def silero_path() -> Path | None:
    """The TorchScript file inside the installed silero-vad wheel, without importing the package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "silero_vad.jit"
    return path if path.is_file() else None


class SpeechGate:
    """Share of speech in 8 kHz audio, batched: ``shares(int16[B, T]) -> float[B]``."""

    def __init__(self, model: torch.jit.ScriptModule) -> None:
        self.model = model
        self._lock = threading.Lock()  # the model keeps its recurrent state between calls

    @classmethod
    def load(cls, path: Path | None = None) -> SpeechGate | None:
        """The gate, or None (with one warning) when silero-vad's weights cannot be loaded."""
        path = path or silero_path()
        if path is None:
            log.warning("speech gate off: the silero-vad package is not installed (pip install silero-vad)")
            return None
        try:
            model = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, OSError, ValueError) as exc:
            log.warning("speech gate off: cannot load %s: %s", path, str(exc).splitlines()[0] if str(exc) else exc)
            return None
        return cls(model)

    @torch.inference_mode()
    def shares(self, pcm: np.ndarray) -> np.ndarray:
        """For each row of int16 8 kHz audio: share of its 32 ms chunks after the first ``WARM_S`` that are speech."""
        x = torch.from_numpy(np.asarray(pcm, np.float32) / 32768.0)
        steps = x.shape[1] // CHUNK
        warm = min(steps - 1, int(WARM_S * RATE) // CHUNK)
        if steps <= 0:
            return np.zeros(len(x), np.float32)
        speech = torch.zeros(len(x))
        with self._lock:
            self.model.reset_states()
            for i in range(steps):
                p = self.model(x[:, i * CHUNK:(i + 1) * CHUNK].contiguous(), RATE).reshape(-1)
                if i >= warm:
                    speech += (p >= SPEECH_P).float()
        return (speech / (steps - warm)).numpy()
