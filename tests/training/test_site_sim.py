"""Site learning simulated (issue #26): how verdicts arrive, and how speakers are split."""
from __future__ import annotations

import numpy as np

from training.call_eval import CallOutcome
from training.calls import Call
from training.site_sim import split_speakers, verdict_labels


def outcome(kind: str, raised: list[tuple[float, str]], onset: float | None = None, windows: int = 40,
            speaker: str = "s") -> CallOutcome:
    """A call of ``windows`` 3 s windows every second (window i ends at i + 3 s)."""
    call = Call(f"{speaker}-{kind}", speaker, kind, np.zeros(8000, np.float32), onset, onset or float(windows + 2))
    scores = [(float(i), float(i + 3), 0.5) for i in range(windows)]
    return CallOutcome(call, raised, scores, windows, 0)


def test_verdicts_arrive_as_agents_give_them_labelled_by_the_daemons_rule() -> None:
    ends = np.arange(40) + 3.0
    # a false alert at 20 s is dismissed: the windows ending from 10 s before it to 10 s after are "not upset"
    labels = verdict_labels(outcome("calm", [(20.0, "alert")]))
    assert set(ends[labels == 0]) == set(np.arange(10.0, 31.0)) and (labels[(ends < 10) | (ends > 30)] == -1).all()
    # an alert after the anger began is confirmed: its windows are "upset"
    labels = verdict_labels(outcome("calm_angry", [(30.0, "alert")], onset=25.0))
    assert set(ends[labels == 1]) == set(np.arange(20.0, 41.0)) and not (labels == 0).any()
    # anger nothing was raised for: the call is marked upset at its end, its last 30 s
    labels = verdict_labels(outcome("calm_angry", [], onset=25.0))
    assert set(ends[labels == 1]) == set(np.arange(13.0, 43.0)) and (labels[ends <= 12] == -1).all()
    # an alert before the onset is dismissed and the anger after it, never alerted, marked
    labels = verdict_labels(outcome("calm_angry", [(8.0, "watch")], onset=25.0))
    assert (labels[ends <= 12] == 0).all() and (labels[ends > 12] == 1).all()
    # a quiet calm call is marked calm, every window; a calm→happy call likewise
    assert (verdict_labels(outcome("calm", [])) == 0).all() and (verdict_labels(outcome("calm_happy", [])) == 0).all()


def test_speakers_split_so_both_sides_have_calm_and_angry_callers() -> None:
    kinds = {"a": ["calm"], "b": ["calm"], "c": ["calm"], "d": ["angry"], "e": ["angry"], "f": ["calm", "calm_happy"]}
    calls = [outcome(k, [], speaker=s).call for s, ks in kinds.items() for k in ks]
    for seed in range(4):
        verdict, scored = split_speakers(calls, seed)
        assert sorted(verdict + scored) == sorted(kinds) and not set(verdict) & set(scored)
        for side in (verdict, scored):
            assert {"d", "e"} & set(side) and {"a", "b", "c"} & set(side)
    assert len({tuple(split_speakers(calls, seed)[0]) for seed in range(4)}) > 1  # splits differ by seed
