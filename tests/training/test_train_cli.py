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


def test_run_with_too_few_callers_says_in_one_line_what_to_change(tmp_path: Path) -> None:
    rows = ["path,label,speaker"]
    for speaker in range(8):  # docs/own-data.md's example folds 4, val_fraction 0.1 need 14
        for n, label in enumerate(("angry", "neutral", "satisfied")):
            write(tmp_path / "clips" / f"{speaker}_{n}.wav", synth("tone", 1.0, 8000, speaker * 3 + n), 8000)
            rows.append(f"clips/{speaker}_{n}.wav,{label},caller{speaker}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    config = Path(__file__).resolve().parents[2] / "training" / "configs" / "own-calls.yaml"
    corpus = f"[{{kind: csv, path: {tmp_path / 'clips.csv'}, label_map: {{angry: NEGATIVE, neutral: NEUTRAL, satisfied: POSITIVE}}}}]"
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--config", str(config), "--set", f"train_corpora={corpus}", "--set", f"output_dir={tmp_path / 'run'}",
              "--set", f"cache_dir={tmp_path / 'cache'}"])
    message = str(stopped.value.code)
    assert "\n" not in message and message.startswith("emovoice-train: 8 speakers (callers) are too few")
    assert "14 speakers are needed" in message and "evaluation.folds" in message
