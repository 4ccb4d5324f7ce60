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
