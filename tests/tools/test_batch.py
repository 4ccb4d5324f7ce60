"""Batch QA (`emovoice-daemon score`): mono and stereo calls through the daemon's engine and policy."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovoice_daemon.config import Config
from emovoice_daemon.tools.batch import BatchError, find_audio, load_channels, score_files, unique_names

from tests.support.scripted_daemon import SCRIPTED_SITE
from tests.support.scripted import ToneClassifier, tone_call

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def calls_dir(tmp_path: Path) -> Path:
    d = tmp_path / "calls"
    (d / "day2").mkdir(parents=True)
    sf.write(d / "upset.wav", tone_call([("calm", 20), ("angry", 20), ("calm", 15)]), 8000, subtype="PCM_16")
    calm = tone_call([("calm", 30)]).astype(np.float32) / 32768
    sf.write(d / "day2" / "calm16k.wav", np.repeat(calm, 2), 16000, subtype="PCM_16")  # another rate
    customer = tone_call([("calm", 10), ("angry", 25)])
    agent = tone_call([("calm", 35)])
    sf.write(d / "day2" / "stereo.wav", np.stack([customer, agent], axis=1), 8000, subtype="PCM_16")
    (d / "broken.wav").write_bytes(b"RIFF not really a wav")
    return d


async def test_batch_scores_mono_and_stereo_and_reports_a_broken_file(calls_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "qa"
    summary = await score_files([calls_dir], out, Config(), ToneClassifier(), jobs=3, progress=False)
    assert (summary["files"], summary["failed"]) == (4, 1)
    assert summary["audio_hours"] == pytest.approx((55 + 30 + 35) / 3600, abs=1e-3)
    assert summary["throughput_audio_h_per_wall_h"] > 1
    assert json.loads((out / "batch.json").read_text()) == summary

    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(out / "calls.csv"))}
    assert "not a readable audio file" in rows["broken.wav"]["error"]
    assert (rows["upset.wav"]["escalations"], rows["upset.wav"]["alerts"]) == ("1", "1")
    assert 20 < float(rows["upset.wav"]["peak_negative_at"]) < 42
    assert rows["calm16k.wav"]["escalations"] == "0" and float(rows["calm16k.wav"]["peak_negative"]) < 0.2
    assert rows["stereo.wav"]["legs"] == "2" and rows["stereo.wav"]["peak_role"] == "customer"
    assert rows["stereo.wav"]["negative_share"].startswith("agent=0.0;customer=0.")

    upset = json.loads((out / "upset.json").read_text())
    assert [e["type"] for e in upset["escalations"]] == ["escalation.raised", "escalation.cleared"]
    assert upset["legs"]["mixed"]["windows_scored"] == 53  # (55 s - 3 s window) / 1 s hop + 1: none skipped
    stereo = json.loads((out / "stereo.json").read_text())
    assert set(stereo["legs"]) == {"customer", "agent"}
    assert stereo["legs"]["agent"]["escalations"] == 0 and stereo["legs"]["customer"]["escalations"] == 1
    for name in ("upset", "calm16k", "stereo"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "broken.json").exists()


def test_batch_rejects_missing_paths_and_wrong_channel_counts(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="no such file or directory"):
        find_audio([tmp_path / "nope"])
    three = tmp_path / "three.wav"
    sf.write(three, np.zeros((8000, 3), dtype=np.int16), 8000)
    with pytest.raises(BatchError, match="3 channels; expected mono or 2"):
        load_channels(three, ("customer", "agent"))


def test_unique_names_disambiguate_equal_stems() -> None:
    paths = [Path("a/x/call.wav"), Path("b/y/call.wav"), Path("c/other.wav")]
    assert unique_names(paths) == ["a__x__call", "b__y__call", "other"]


async def test_batch_scores_flac_and_names_what_it_skipped(tmp_path: Path) -> None:
    calls = tmp_path / "flac"
    calls.mkdir()
    sf.write(calls / "upset.flac", tone_call([("calm", 20), ("angry", 20)]), 8000, subtype="PCM_16")
    (calls / "notes.txt").write_text("not audio")
    summary = await score_files([calls], tmp_path / "qa", Config(), ToneClassifier(), progress=False)
    assert summary["files"] == 1 and summary["failed"] == 0
    assert json.loads((tmp_path / "qa" / "upset.json").read_text())["legs"]["mixed"]["escalations"] == 1
    assert summary["skipped"] == [str(calls / "notes.txt")]


def test_score_cli_writes_reports_and_prints_throughput(calls_dir: Path, tmp_path: Path) -> None:
    (calls_dir / "broken.wav").unlink()
    out = tmp_path / "cli-qa"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SCRIPTED_SITE), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "score", str(calls_dir), "-o", str(out),
                           "--channels", "agent,customer"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 calls (0 failed)" in done.stdout and "audio hours per wall-clock hour" in done.stdout
    stereo = json.loads((out / "stereo.json").read_text())
    assert stereo["legs"]["agent"]["escalations"] == 1  # channel roles swapped by --channels
    bad = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "score", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "score", str(calls_dir), "--channels", "a,b"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert usage.returncode == 2 and "expected customer,agent" in usage.stderr


def test_site_statistics_default_to_the_state_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from emovoice_daemon.config import ModelConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert ModelConfig().site_stats_path == str(tmp_path / "xdg" / "emovoice" / "site-stats.npz")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/emovoice")  # the systemd unit's StateDirectory=
    assert ModelConfig().site_stats_path == "/var/lib/emovoice/site-stats.npz"


def test_score_leaves_the_live_site_statistics_alone_unless_asked(tmp_path: Path) -> None:
    from emovoice_daemon.tools import cli
    from tests.scoring.test_whisper import tiny_encoder_dir, tiny_head_dir

    head = tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc"))  # a model that adapts to the line
    live = tmp_path / "live-site-stats.npz"
    (tmp_path / "config.yaml").write_text(f"model: {{path: {head}, site_stats_path: {live}}}\n")
    calls = tmp_path / "calls"
    calls.mkdir()
    sf.write(calls / "call.wav", tone_call([("calm", 6), ("angry", 6)]), 8000, subtype="PCM_16")
    args = ["score", str(calls), "-c", str(tmp_path / "config.yaml"), "--jobs", "1"]
    assert cli.main([*args, "-o", str(tmp_path / "qa")]) == 0
    assert not live.exists()
    assert cli.main([*args, "-o", str(tmp_path / "qa2"), "--site-stats", str(live)]) == 0
    assert live.is_file()
