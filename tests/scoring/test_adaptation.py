"""Line adaptation: site statistics learnt and persisted, leg statistics blended in as the leg goes on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emovoice_daemon.scoring.adaptation import LineAdapter, leg_weight

F = 4


def adapter(tmp_path: Path | None = None, **kw: float) -> LineAdapter:
    return LineAdapter(np.zeros(F), np.ones(F), tmp_path / "state" / "site.npz" if tmp_path else None, **kw)


def test_a_new_leg_is_judged_by_the_site_alone() -> None:
    a = adapter()
    x = np.full((1, F), 3.0)
    assert np.allclose(a.normalise(["leg"], x), 3.0)  # the model's own statistics: mean 0, std 1


def test_site_statistics_follow_the_traffic() -> None:
    a = adapter(prior_windows=10, site_memory=100)
    rng = np.random.default_rng(0)
    for i in range(400):
        a.normalise([f"leg{i}"], rng.normal(5.0, 2.0, (1, F)))
    assert np.allclose(a.site.mean, 5.0, atol=0.6) and np.allclose(np.sqrt(a.site.var), 2.0, atol=0.5)
    assert abs(float(a.normalise(["new"], np.full((1, F), 5.0)).mean())) < 0.4


def test_weights_say_how_much_each_window_teaches() -> None:
    """Weight 0: judged, not learnt from; one window of weight k moves the site about as far as k of weight 1."""
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, (30, F))
    judged = adapter(prior_windows=10)
    assert np.allclose(judged.normalise([f"l{i}" for i in range(30)], x, np.zeros(30)), x)
    assert np.allclose(judged.site.mean, 0.0) and judged.site.count == 10 and judged.legs == {}
    every, weighted = adapter(prior_windows=10), adapter(prior_windows=10)
    every.normalise(["l"] * 30, x)
    weighted.normalise(["l"] * 10, x[::3], np.full(10, 3.0))  # every third window, counting three
    assert weighted.site.count == every.site.count == 40
    assert np.allclose(weighted.site.mean, every.site.mean, atol=1.0) and np.all(weighted.site.mean > 2.5)


def test_a_leg_angry_throughout_stays_angry() -> None:
    """The leg's own mean replaces at most leg_cap of the site's, so a constant offset keeps (1 - cap) of it."""
    a = adapter(leg_prior=5, leg_cap=0.5, prior_windows=10_000)  # a site that has heard plenty of other calls
    z = [float(a.normalise(["angry"], np.full((1, F), 4.0)).mean()) for _ in range(200)]
    assert z[0] == pytest.approx(4.0)
    assert 1.5 < z[-1] < 2.0  # 4 * (1 - 0.5), less what the site learnt from this leg too


def test_leg_weight_grows_with_history_and_is_capped() -> None:
    weights = [leg_weight(n, 20.0, 0.5) for n in (0, 5, 20, 100, 10_000)]
    assert weights == sorted(weights) and weights[0] == 0.0 and weights[2] == pytest.approx(0.5) and weights[-1] == 0.5


def test_site_statistics_survive_a_restart(tmp_path: Path) -> None:
    a = adapter(tmp_path, prior_windows=1)
    a.normalise(["l1", "l1"], np.full((2, F), 7.0))
    a.close_leg("l1")  # saves
    b = adapter(tmp_path)
    assert np.allclose(b.site.mean, a.site.mean) and b.site.count == a.site.count
    assert b.legs == {}


def test_unreadable_or_foreign_state_falls_back_to_the_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "site.npz"
    path.parent.mkdir()
    path.write_bytes(b"not npz")
    assert np.allclose(adapter(tmp_path).site.mean, 0.0)
    np.savez(path, mean=np.ones(F + 1), var=np.ones(F + 1), count=3.0)
    assert np.allclose(adapter(tmp_path).site.mean, 0.0)
    assert "another model" in caplog.text and "unreadable" in caplog.text


def test_periodic_save(tmp_path: Path) -> None:
    a = adapter(tmp_path, save_every=3)
    a.normalise(["x", "y"], np.ones((2, F)))
    assert not a.state_path.exists()
    a.normalise(["x"], np.ones((1, F)))
    assert a.state_path.exists()


def test_by_default_the_site_centres_but_never_narrows_the_scale_nor_absorbs_a_leg() -> None:
    """A site of few, similar voices (spread 0.1) must not inflate their differences tenfold, and a caller who
    stays angry (offset 2 above the site) keeps that offset however long the call."""
    a = adapter(prior_windows=10, site_memory=1000)
    rng = np.random.default_rng(1)
    for i in range(500):
        a.normalise([f"calm{i}"], rng.normal(5.0, 0.1, (1, F)))
    assert np.allclose(a.normalise(["probe"], np.full((1, F), 5.3)), 0.3, atol=0.15)  # scaled by the model's std 1 (not 3)
    z = [float(a.normalise(["angry"], np.full((1, F), 7.0)).mean()) for _ in range(100)]
    assert z[-1] > 1.5  # still about 2 (less what the site learnt from it): the leg's own mean is not blended in
