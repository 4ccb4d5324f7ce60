from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovoice_daemon.config import CuesConfig
from emovoice_daemon.judgement.cues import TALK_OVER_REASON, CueTracker
from emovoice_daemon.outputs.events import EventBus
from tests.conftest import espeak

RATE = 8000


def tone(seconds: float, dbfs: float = -20.0, hz: float = 200.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    amp = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


@pytest.fixture
def rig() -> tuple[CueTracker, list[dict]]:
    bus, events = EventBus(), []
    bus.add_sink(events.append)
    return CueTracker(CuesConfig(talk_over_min_s=1.0, long_silence_s=5.0), -45.0, bus), events


def _feed(cues, role: str, pcm: np.ndarray, chunk: int = 333) -> None:
    for i in range(0, len(pcm), chunk):  # odd chunk sizes: frames straddle chunks
        cues.feed(role, pcm[i:i + chunk])


def test_agent_talking_over_an_upset_customer_is_escalated_and_cleared(rig) -> None:
    tracker, events = rig
    cues = tracker.open("c1")
    tracker.sink({"type": "score", "call_id": "c1", "role": "customer", "negative_smoothed": 0.8})
    _feed(cues, "customer", np.concatenate([tone(3.0), silence(1.0)]))
    _feed(cues, "agent", np.concatenate([silence(1.5), tone(1.5, -14.0), silence(1.0)]))
    raised = [e for e in events if e["type"] == "escalation.raised"]
    cleared = [e for e in events if e["type"] == "escalation.cleared"]
    assert len(raised) == 1 and raised[0]["role"] == "agent" and raised[0]["reason"] == TALK_OVER_REASON
    assert raised[0]["at"] == pytest.approx(2.5, abs=0.05) and raised[0]["negative_smoothed"] == 0.8
    assert len(cleared) == 1 and cleared[0]["duration_s"] == pytest.approx(0.5, abs=0.05)
    [cue] = [e for e in events if e["type"] == "cue"]  # the wallboard's mark: who talked over, from when
    assert cue["cue"] == "talk_over" and cue["role"] == "agent" and cue["at"] == pytest.approx(1.5, abs=0.05)
    summary = tracker.close("c1")
    assert summary["talk_overs"] == 1 and summary["talk_over_s"] == pytest.approx(1.5, abs=0.05)
    assert summary["agent_minus_customer_db"] == pytest.approx(6.0, abs=0.3)


def test_no_escalation_for_a_calm_customer_or_when_the_customer_interrupts(rig) -> None:
    tracker, events = rig
    calm = tracker.open("calm")
    calm.customer_negative = 0.2
    _feed(calm, "customer", tone(3.0))
    _feed(calm, "agent", np.concatenate([silence(1.0), tone(2.0)]))
    upset = tracker.open("interrupting-customer")
    upset.customer_negative = 0.9
    _feed(upset, "agent", tone(3.0))
    _feed(upset, "customer", np.concatenate([silence(1.0), tone(2.0)]))
    assert not [e for e in events if e["type"].startswith("escalation.")]
    assert calm.talk_overs == 1 and upset.talk_overs == 1
    cues = {e["call_id"]: e for e in events if e["type"] == "cue"}
    assert (cues["calm"]["role"], cues["interrupting-customer"]["role"]) == ("agent", "customer")


def test_long_silence_pace_and_short_overlaps(rig) -> None:
    tracker, events = rig
    cues = tracker.open("c2")
    segment = np.concatenate([tone(0.5), silence(0.5)])
    _feed(cues, "customer", np.concatenate([np.tile(segment, 3), silence(6.0)]))  # 3 segments in 9 s
    _feed(cues, "agent", np.concatenate([silence(0.2), tone(0.5), silence(8.3)]))  # overlaps 0.3 s: not a talk-over
    summary = tracker.close("c2")
    assert summary["long_silences"] == 1
    [cue] = [e for e in events if e["type"] == "cue"]
    assert cue["cue"] == "long_silence" and cue["at"] == pytest.approx(2.5, abs=0.05)
    assert summary["talk_overs"] == 0 and summary["talk_over_s"] == pytest.approx(0.3, abs=0.05)
    assert summary["pace_per_min"] == {"customer": pytest.approx(20.0, abs=0.5), "agent": pytest.approx(6.7, abs=0.2)}


def test_tracker_ignores_other_calls_and_closing_twice(rig) -> None:
    tracker, _ = rig
    cues = tracker.open("c3")
    tracker.sink({"type": "score", "call_id": "other", "role": "customer", "negative_smoothed": 0.9})
    tracker.sink({"type": "score", "call_id": "c3", "role": "agent", "negative_smoothed": 0.9})
    assert cues.customer_negative == 0.0
    assert tracker.close("c3") is not None and tracker.close("c3") is None


def test_overlapping_real_speech_counts_as_talk_over(rig, tmp_path: Path) -> None:
    """Speech (espeak-ng) is never voiced for a whole second on both sides at once (pauses between words,
    unvoiced consonants): short gaps must not end a talk-over, or talk_over_s grows while talk_overs stays 0."""
    tracker, events = rig
    customer, _ = sf.read(espeak("This is the third time I am calling about this. Nobody has fixed anything and I "
                                 "am really fed up with waiting for you.", tmp_path / "customer.wav"), dtype="int16")
    agent, _ = sf.read(espeak("I understand, and I am sorry. Let me look at your account right now and see what "
                              "happened.", tmp_path / "agent.wav"), dtype="int16")
    cues = tracker.open("speech")
    cues.customer_negative = 0.8
    _feed(cues, "customer", customer)
    _feed(cues, "agent", np.concatenate([silence(1.0), agent])[:len(customer)])  # the agent cuts in after 1 s
    both = [c and a for c, a in zip(cues.tracks["customer"].voiced, cues.tracks["agent"].voiced)]
    longest = max(len(run) for run in "".join("1" if b else "0" for b in both).split("0"))
    assert longest * 0.02 < 1.0  # the gaps are there: no single voiced run reaches talk_over_min_s
    summary = tracker.close("speech")
    assert summary["talk_over_s"] > 1.0 and summary["talk_overs"] >= 1
    raised = [e for e in events if e["type"] == "escalation.raised"]
    cleared = [e for e in events if e["type"] == "escalation.cleared"]
    assert raised and raised[0]["reason"] == TALK_OVER_REASON and raised[0]["at"] >= 1.0 + 1.0 - 0.05
    assert len(cleared) == len(raised)


def test_a_heated_exchange_is_one_cue_per_cooldown_and_no_clear_predates_its_raise() -> None:
    bus, events = EventBus(), []
    bus.add_sink(events.append)
    tracker = CueTracker(CuesConfig(talk_over_min_s=1.0, talk_over_cooldown_s=30.0), -45.0, bus)
    cues = tracker.open("c3")
    cues.customer_negative = 0.9
    bursts = 10  # the agent cuts in 10 times in 40 s while the customer talks on
    _feed(cues, "customer", tone(40.0))
    _feed(cues, "agent", np.concatenate([np.concatenate([silence(2.0), tone(1.6, -14.0), silence(0.4)])] * bursts))
    tracker.close("c3")
    raised = [e for e in events if e["type"] == "escalation.raised"]
    cleared = [e for e in events if e["type"] == "escalation.cleared"]
    assert cues.talk_overs == bursts and len(raised) == 2  # at 3 s, then the first burst 30 s after the clear
    assert raised[1]["at"] - cleared[0]["at"] >= 30.0
    assert len(cleared) == 2 and all(e["duration_s"] >= 0 for e in cleared)


def test_a_talk_over_reaching_its_length_in_a_pause_clears_with_a_duration_of_zero_not_negative(rig) -> None:
    tracker, events = rig
    cues = tracker.open("c4")
    cues.customer_negative = 0.9
    _feed(cues, "customer", tone(3.0))
    _feed(cues, "agent", np.concatenate([silence(1.0), tone(0.86, -14.0), silence(2.14)]))  # 1 s counts the pause
    (raised,) = [e for e in events if e["type"] == "escalation.raised"]
    (cleared,) = [e for e in events if e["type"] == "escalation.cleared"]
    assert cleared["at"] >= raised["at"] and cleared["duration_s"] == 0.0
