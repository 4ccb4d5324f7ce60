from pathlib import Path

import pytest

from training.config import load_config
from training.run import TRAINER_MODULES

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_configs_parse(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model_kind in TRAINER_MODULES
    assert cfg.train_corpora and cfg.evaluation.folds >= 2
    assert all(spec.kind != "ravdess" for spec in cfg.train_corpora)  # RAVDESS (CC BY-NC-SA) is test-only


def test_default_config_reproduces_the_shipped_model() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "training" / "configs" / "default.yaml")
    assert cfg.model_kind == "compact" and cfg.export_dir == Path("emovoice_daemon/scoring/models/default")
    assert cfg.ship.startswith("fold") or cfg.ship == "final"


def test_own_calls_example_writes_under_runs_and_never_over_the_shipped_model() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "training" / "configs" / "own-calls.yaml")
    assert [spec.kind for spec in cfg.train_corpora] == ["csv"]
    assert cfg.output_dir == Path("runs/own-calls") and cfg.export_dir == Path("runs/own-calls/model")


def test_the_training_cache_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for path in CONFIGS:  # no example config pins a cache shared by every user of the machine
        assert load_config(path).cache_dir == tmp_path / "xdg" / "emovoice" / "training", path.name
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(CONFIGS[0]).cache_dir == tmp_path / "home" / ".cache" / "emovoice" / "training"
    assert load_config(CONFIGS[0], {"cache_dir": None}).cache_dir is None  # null: no cache
