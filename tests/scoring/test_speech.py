"""The speech gate: hold music, tones and noise are no evidence; speech is scored; a leg of music is on hold."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from emovoice_daemon.calls import HOLD_AFTER_S, CallManager
from emovoice_daemon.config import EngineConfig, EscalationConfig, PipelineConfig
from emovoice_daemon.judgement.policy import policy_factory
from emovoice_daemon.outputs.events import EventBus
from emovoice_daemon.scoring.engine import ScoringEngine
from emovoice_daemon.scoring.speech import SpeechGate
from emovoice_daemon.tools.demo import bundled_calls
from training.line_conditions import MOH_DIR, _cadence, dtmf_digits

pytestmark = pytest.mark.speech_gate
RATE = 8000


def int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16)


def hold_music(seconds: float) -> np.ndarray:
    """Asterisk's own hold music (Debian asterisk-moh-opsound-wav, installed by ./dev test)."""
    files = sorted(MOH_DIR.glob("*.wav"))
    if not files:
        pytest.skip(f"no hold music in {MOH_DIR}: apt install asterisk-moh-opsound-wav (./dev test does)")
    from training.machine_speech import read_8k

    x = read_8k(files[0])
    return int16(np.tile(x, int(np.ceil(seconds * RATE / len(x))))[: int(seconds * RATE)])


def speech(seconds: float) -> np.ndarray:
    """The demo's calm caller (bundled CREMA-D speech), cut to ``seconds``."""
    pcm = bundled_calls()[0].audio
    return np.tile(pcm, int(np.ceil(seconds * RATE / len(pcm))))[: int(seconds * RATE)]


@pytest.fixture(scope="module")
def gate() -> SpeechGate:
    g = SpeechGate.load()
    assert g is not None, "silero-vad is a dependency: its weights must load"
    return g


def test_speech_passes_and_music_and_tones_do_not(gate: SpeechGate) -> None:
    rng = np.random.default_rng(0)
    rows = np.stack([speech(3.0), hold_music(3.0), int16(_cadence((440, 480), 2.0, 1.0, 3.0)), int16(dtmf_digits(rng, 3.0))])
    voice, music, ringback, dtmf = gate.shares(rows)
    assert voice > 0.5
    assert max(music, ringback, dtmf) < 0.1


def test_the_unrolled_network_gives_silero_step_by_steps_shares(gate: SpeechGate) -> None:
    rng = np.random.default_rng(1)
    rows = np.stack([speech(1.25), hold_music(1.25), int16(rng.uniform(-0.05, 0.05, 10000))])
    assert gate.unrolled is not None  # the shipped silero file runs unrolled (about 5x less CPU per window)
    fast = gate.shares(rows)
    unrolled, gate.unrolled = gate.unrolled, None
    try:
        steps = gate.shares(rows)
    finally:
        gate.unrolled = unrolled
    np.testing.assert_array_equal(fast, steps)


class Counting:
    """A classifier stand-in that counts the windows it is asked to score."""

    name, trained, labels, model, sampling_rate, normalize_input = "counting", False, ("NEGATIVE", "NEUTRAL", "POSITIVE"), None, 8000, False
    escalation: dict = {}

    def __init__(self) -> None:
        self.windows = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.windows += len(batch)
        return np.tile(np.array([[0.9, 0.05, 0.05]], np.float32), (len(batch), 1))


async def run_call(audio: np.ndarray, clf: Counting) -> list[dict]:
    engine = ScoringEngine(clf, PipelineConfig(), EngineConfig())
    assert engine.gate is not None
    bus = EventBus()
    events: list[dict] = []
    bus.add_sink(events.append)
    calls = CallManager(engine, bus, policy_factory(EscalationConfig()), {"name": "counting", "trained": False})
    await engine.start()
    leg = calls.start_leg("c1", "customer", "test", {})
    for i in range(0, len(audio), 160):
        leg.feed(audio[i:i + 160])
        if i % 8000 == 0:
            await asyncio.sleep(0)
    await leg.end("eof")
    await engine.stop()
    return events


async def test_music_is_no_evidence_and_puts_the_leg_on_hold() -> None:
    clf = Counting()
    audio = np.concatenate([speech(8.0), hold_music(20.0), speech(8.0)])
    events = await run_call(audio, clf)
    scores = [e for e in events if e["type"] == "score"]
    holds = [(e["on_hold"], e["at"]) for e in events if e["type"] == "call.hold"]
    ended = next(e for e in events if e["type"] == "call.ended")["summary"]
    # the music stretch (8-28 s) is never scored: no window wholly inside it reaches the model or the policy
    assert not [e for e in scores if e["window"]["start"] >= 9.0 and e["window"]["end"] <= 27.0]
    assert ended["windows_nonspeech"] >= 12 and clf.windows == ended["windows_scored"]
    assert [h for h, _ in holds] == [True, False]
    # on hold about HOLD_AFTER_S after the music began (give or take the 3 s window that straddles its start)
    assert 8.0 + HOLD_AFTER_S - 3.0 <= holds[0][1] <= 8.0 + HOLD_AFTER_S + 4.0 and holds[1][1] >= 28.0


async def test_a_speech_call_is_scored_throughout() -> None:
    clf = Counting()
    events = await run_call(speech(12.0), clf)
    ended = next(e for e in events if e["type"] == "call.ended")["summary"]
    assert ended["windows_nonspeech"] <= 1 and ended["windows_scored"] >= 9
    assert not [e for e in events if e["type"] == "call.hold"]


def test_unloadable_weights_turn_the_gate_off_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "silero_vad.jit"
    bad.write_bytes(b"not a torchscript file")
    with caplog.at_level(logging.WARNING):
        assert SpeechGate.load(bad) is None
    lines = [r.getMessage() for r in caplog.records if "speech gate off" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
