"""Speech gate: does a window hold human speech, or only music, tones and noise?

The energy VAD (:mod:`.vad`) passes anything loud and periodic - hold music, ringback, DTMF. The gate runs
silero-vad's 8 kHz model (MIT; its weights ship inside the ``silero-vad`` wheel) on the newest hop of each window
due, a whole batch of legs at once, and remembers each hop's share of 32 ms chunks that hold speech. A window whose
hops hold less than ``min_share`` speech is *no evidence* (``nonspeech``): the model does not run on it and the
escalation policy never sees it.

silero's 8 kHz network is a per-chunk front-end (STFT and convolutions over the chunk and the 32 samples before
it) followed by an LSTM cell. The gate runs it *unrolled*: the front-end on every chunk of every row in one batch,
the LSTM over the whole sequence in one call, instead of one TorchScript call per 32 ms chunk (the same
probabilities, checked against the step-by-step model at load; about 5x less CPU at the engine's small batches).
A silero file of another shape is run step by step.

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


class Unrolled(torch.nn.Module):
    """silero's 8 kHz network over whole sequences: chunk front-end batched, LSTM in one call."""

    def __init__(self, model: torch.jit.ScriptModule) -> None:
        super().__init__()
        net = model._model_8k
        self.context = int(net.context_size_samples)
        self.stft, self.encoder, self.head = net.stft, net.encoder, net.decoder.decoder
        cell = net.decoder.rnn
        self.lstm = torch.nn.LSTM(cell.weight_ih.shape[1], cell.weight_hh.shape[1], batch_first=True)
        with torch.no_grad():
            for ours, theirs in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh"),
                                 ("bias_ih_l0", "bias_ih"), ("bias_hh_l0", "bias_hh")):
                getattr(self.lstm, ours).copy_(getattr(cell, theirs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Speech probability of each 32 ms chunk: float[B, T] (T whole chunks) -> float[B, T // CHUNK]."""
        rows, steps = x.shape[0], x.shape[1] // CHUNK
        padded = torch.cat([torch.zeros(rows, self.context), x], 1)
        at = torch.arange(steps)[:, None] * CHUNK + torch.arange(CHUNK + self.context)[None]
        feats = self.encoder(self.stft(padded[:, at].reshape(rows * steps, -1))).reshape(rows, steps, -1)
        hidden, _ = self.lstm(feats)
        return self.head(hidden.reshape(rows * steps, -1, 1)).reshape(rows, steps)


def unrolled(model: torch.jit.ScriptModule) -> Unrolled | None:
    """The unrolled network, if it gives the step-by-step model's probabilities on a test signal."""
    try:
        net = Unrolled(model).eval()
    except (AttributeError, RuntimeError, TypeError, IndexError) as exc:
        log.info("speech gate runs silero step by step (%s)", exc)
        return None
    x = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, (2, 12 * CHUNK)).astype(np.float32))
    with torch.inference_mode():
        try:
            fast = net(x)
        except RuntimeError as exc:
            log.info("speech gate runs silero step by step (%s)", str(exc).splitlines()[0])
            return None
        model.reset_states()
        steps = torch.stack([model(x[:, i * CHUNK:(i + 1) * CHUNK].contiguous(), RATE).reshape(-1) for i in range(12)], 1)
    if not torch.allclose(fast, steps, atol=1e-4):
        log.info("speech gate runs silero step by step (the unrolled network differs by %.2g)", float((fast - steps).abs().max()))
        return None
    return net


class SpeechGate:
    """Share of speech in 8 kHz audio, batched: ``shares(int16[B, T]) -> float[B]``."""

    def __init__(self, model: torch.jit.ScriptModule) -> None:
        self.model = model
        self._lock = threading.Lock()  # the model keeps its recurrent state between calls
        self.unrolled = unrolled(model)

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
        if self.unrolled is not None:
            p = self.unrolled(x[:, : steps * CHUNK])[:, warm:]
            return (p >= SPEECH_P).float().mean(1).numpy()
        speech = torch.zeros(len(x))
        with self._lock:
            self.model.reset_states()
            for i in range(steps):
                p = self.model(x[:, i * CHUNK:(i + 1) * CHUNK].contiguous(), RATE).reshape(-1)
                if i >= warm:
                    speech += (p >= SPEECH_P).float()
        return (speech / (steps - warm)).numpy()
