"""EscalationPolicy on scripted NEGATIVE sequences (one window per second)."""
from __future__ import annotations

import pytest

from emovoice_daemon.config import ConfigError, EscalationConfig, parse_config
from emovoice_daemon.judgement.policy import EscalationPolicy, Transition, policy_factory, profile_for


def run(cfg: EscalationConfig, negatives: list[float], hop: float = 1.0) -> tuple[list[Transition], list[float]]:
    """Feed one window per ``hop`` seconds; return all transitions and the smoothed series."""
    policy = EscalationPolicy(cfg)
    out: list[Transition] = []
    smoothed = []
    for i, neg in enumerate(negatives):
        out += policy.update((i + 1) * hop, {"NEGATIVE": neg, "NEUTRAL": 1 - neg, "POSITIVE": 0.0})
        smoothed.append(policy.smoothed)
    return out, smoothed


def kinds(transitions: list[Transition]) -> list[tuple[str, str]]:
    return [(t.kind, t.severity) for t in transitions]


def test_neutral_then_angry_then_calm_raises_one_alert_within_min_duration_and_clears() -> None:
    cfg = EscalationConfig()
    negatives = [0.1] * 60 + [0.9] * 30 + [0.05] * 30
    transitions, smoothed = run(cfg, negatives)
    assert kinds(transitions) == [("raised", "alert"), ("cleared", "")]
    crossed_at = next(i + 1 for i, s in enumerate(smoothed) if s >= cfg.enter)
    raised, cleared = transitions
    assert 0 <= raised.at - crossed_at <= cfg.min_duration_s
    assert raised.reason == "negative above threshold"
    assert cleared.at > 90 and cleared.duration_s == pytest.approx(cleared.at - raised.at)


def test_short_spike_does_not_raise() -> None:
    transitions, _ = run(EscalationConfig(), [0.1] * 20 + [0.95] + [0.1] * 20 + [0.95, 0.95] + [0.1] * 20)
    assert transitions == []


def test_flapping_around_enter_threshold_does_not_raise() -> None:
    transitions, smoothed = run(EscalationConfig(), [0.1] * 10 + [0.9, 0.3] * 40)
    assert max(smoothed) >= EscalationConfig().enter  # it does cross the threshold, repeatedly
    assert transitions == []


def test_flapping_while_raised_does_not_spam() -> None:
    """Between exit and enter hysteresis holds the escalation: one raise, no clear/raise churn."""
    transitions, _ = run(EscalationConfig(), [0.1] * 10 + [0.9] * 5 + [0.7, 0.35] * 40)
    assert kinds(transitions) == [("raised", "alert")]


def test_dips_below_exit_shorter_than_clear_duration_do_not_clear() -> None:
    transitions, _ = run(EscalationConfig(), [0.9] * 10 + ([0.05] * 2 + [0.95] * 3) * 10)
    assert kinds(transitions) == [("raised", "alert")]


def test_cooldown_blocks_a_new_escalation_then_allows_it() -> None:
    cfg = EscalationConfig(cooldown_s=20.0)
    angry, calm = [0.9] * 8, [0.05] * 6
    transitions, _ = run(cfg, angry + calm + angry + [0.9] * 20)
    raised = [t for t in transitions if t.kind == "raised"]
    cleared = next(t for t in transitions if t.kind == "cleared")
    assert len(raised) == 2
    assert raised[1].at >= cleared.at + cfg.cooldown_s


def test_moderate_negative_raises_watch_then_upgrades_to_alert() -> None:
    cfg = EscalationConfig(trend_rise=0)
    transitions, _ = run(cfg, [0.65] * 10 + [0.9] * 10)
    assert kinds(transitions) == [("raised", "watch"), ("raised", "alert")]
    assert transitions[1].reason == "negative above alert threshold"


def test_rising_trend_raises_watch_before_enter() -> None:
    ramp = [0.1 + 0.45 * i / 40 for i in range(41)]  # 0.10 -> 0.55 over 40 s, never reaches enter
    transitions, smoothed = run(EscalationConfig(trend_rise=0.25), [0.1] * 10 + ramp + [0.55] * 10)
    assert max(smoothed) < EscalationConfig().enter
    assert kinds(transitions) == [("raised", "watch")]
    assert transitions[0].reason == "frustration increasing"


def test_trend_rule_is_off_by_default() -> None:
    ramp = [0.1 + 0.45 * i / 40 for i in range(41)]
    transitions, _ = run(EscalationConfig(), [0.1] * 10 + ramp + [0.55] * 10)
    assert transitions == [] and EscalationConfig().trend_rise == 0


def test_median_smoothing_ignores_isolated_outliers() -> None:
    cfg = EscalationConfig(method="median", median_windows=5, min_duration_s=0)
    transitions, smoothed = run(cfg, [0.1, 0.1, 0.99, 0.1, 0.1, 0.99, 0.1] * 5)
    assert max(smoothed) == pytest.approx(0.1)
    assert transitions == []


def test_ema_weight_is_applied() -> None:
    _, smoothed = run(EscalationConfig(smoothing=0.25), [0.0, 1.0])
    assert smoothed == pytest.approx([0.0, 0.25])


def test_transition_fields_match_event_schema() -> None:
    raised = Transition("raised", 12.345, 0.71234, "alert", "x")
    cleared = Transition("cleared", 20.0, 0.3, duration_s=7.655)
    assert raised.fields() == {"severity": "alert", "reason": "x", "at": 12.35, "negative_smoothed": 0.7123}
    assert cleared.fields() == {"at": 20.0, "negative_smoothed": 0.3, "duration_s": 7.66}


def test_profile_for_queue_overrides_keys() -> None:
    cfg = parse_config("escalation:\n  enter: 0.6\n  profiles:\n    vip: {enter: 0.45, exit: 0.3}\n").escalation
    vip = profile_for(cfg, {"queue": "vip", "agent": "1001"})
    assert (vip.enter, vip.exit, vip.alert) == (0.45, 0.3, cfg.alert)
    assert profile_for(cfg, {"queue": "other"}) is cfg
    assert profile_for(cfg, {"tenant": "vip"}).enter == 0.45
    transitions, _ = run(vip, [0.5] * 10)
    assert kinds(transitions) == [("raised", "watch")]
    assert run(cfg, [0.5] * 10)[0] == []
    make = policy_factory(cfg)
    assert make({"queue": "vip"}).cfg.enter == 0.45 and make({}).cfg is cfg
    assert make({"queue": "vip"}) is not make({"queue": "vip"})  # one policy (state) per leg


@pytest.mark.parametrize("yaml_text, message", [
    ("escalation:\n  profiles:\n    vip: {entr: 0.5}\n", "profile 'vip': unknown key 'entr'"),
    ("escalation:\n  profiles:\n    vip: {enter: 2}\n", "profile 'vip': enter: must be between 0 and 1"),
    ("escalation:\n  method: mean\n", "escalation.method: must be one of ema, median"),
    ("escalation:\n  enter: 0.6\n  alert: 0.5\n", "escalation.alert: must be >= escalation.enter"),
])
def test_bad_escalation_config_is_a_clear_error(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(yaml_text, "c.yaml")
    assert message in str(err.value)

