import json
from pathlib import Path

import pytest
from synthetic_audio import synth, write
from test_train_default_model import DEFAULT_DIR

from training.cli import main


def test_evaluate_command_scores_an_exported_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for actor in ("01", "02"):
        for emo, kind in (("01", "tone"), ("03", "chirp"), ("05", "buzz")):
            write(tmp_path / "ravdess" / f"Actor_{actor}" / f"03-01-{emo}-01-01-01-{actor}.wav", synth(kind, 1.0, 16000, int(actor)), 16000)
    main(["evaluate", "--model", str(DEFAULT_DIR), "--kind", "ravdess", "--data", str(tmp_path / "ravdess"),
          "--threads", "1", "--cache-dir", "", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "| ravdess (all) | clean |" in out and "| ravdess (all) | telephony |" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["telephony"]["calibrated"]["n"] == 6


def test_run_rejects_missing_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["run", "--config", str(tmp_path / "nope.yaml")])
