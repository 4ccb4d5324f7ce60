"""A model directory's own escalation defaults (escalation.json): used unless the config sets the key."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emovoice_daemon.config import parse_config
from emovoice_daemon.judgement.policy import describe, with_model_defaults
from emovoice_daemon.scoring.models.loader import COMPACT_DIR, ESCALATION_FILE, ModelError, read_escalation

MODEL = {"enter": 0.8, "exit": 0.6, "alert": 0.85, "min_duration_s": 3.0, "trend_rise": 0.0}


def test_model_defaults_apply_where_the_config_is_silent() -> None:
    cfg = with_model_defaults(parse_config("escalation:\n  min_duration_s: 1.5\n").escalation, MODEL)
    assert (cfg.enter, cfg.exit, cfg.alert, cfg.trend_rise) == (0.8, 0.6, 0.85, 0.0)
    assert cfg.min_duration_s == 1.5  # the config's own value wins
    line = describe(cfg, MODEL)
    assert "enter 0.8 (model)" in line and "min_duration_s 1.5 (config)" in line and "cooldown_s 30.0 (built-in)" in line


def test_thresholds_come_from_one_place_never_mixed() -> None:
    """A config that sets one threshold keeps all three of its own scale (the model's are for its probabilities)."""
    cfg = with_model_defaults(parse_config("escalation:\n  alert: 0.9\n").escalation, MODEL)
    assert (cfg.enter, cfg.exit, cfg.alert) == (0.6, 0.4, 0.9) and cfg.min_duration_s == 3.0
    assert "enter 0.6 (built-in)" in describe(cfg, MODEL)


def test_a_bad_escalation_file_is_a_one_line_model_error(tmp_path: Path) -> None:
    (tmp_path / ESCALATION_FILE).write_text(json.dumps({"enter": 1.7}))
    with pytest.raises(ModelError, match=r"escalation.json: enter: must be between 0 and 1$"):
        read_escalation(tmp_path)
    (tmp_path / ESCALATION_FILE).write_text(json.dumps({"entr": 0.5}))
    with pytest.raises(ModelError, match="unknown key 'entr'"):
        read_escalation(tmp_path)
    assert read_escalation(tmp_path / "nowhere") == {}


def test_check_config_says_which_values_are_in_force_and_where_from(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(COMPACT_DIR, model)
    (model / ESCALATION_FILE).write_text(json.dumps(MODEL))
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  path: {model}\nescalation:\n  cooldown_s: 10\n")
    out = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "check-config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "enter 0.8 (model)" in out.stdout and "cooldown_s 10.0 (config)" in out.stdout
