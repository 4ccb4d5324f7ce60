"""The README's first command: ``emovoice-daemon demo`` streams calls through the real AudioSocket port."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import espeak, free_port


def run_demo(tmp_path: Path, *args: str) -> str:
    config = {"audiosocket": {"port": free_port()}, "api": {"port": free_port()},
              "events": {"log_path": str(tmp_path / "events.jsonl")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "emovoice_daemon.cli", "demo", "-c", str(tmp_path / "config.yaml"),
                           "--calls", "1", *args], cwd=tmp_path, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_demo_plays_a_recording_through_the_daemon_and_prints_its_events(tmp_path: Path) -> None:
    wav = espeak("Hello. I am calling about my order, it has not arrived yet.", tmp_path / "my_call.wav")
    out = run_demo(tmp_path, "--duration", "10", str(wav))
    assert "Model        default (trained)" in out and "Calls        my_call.wav" in out
    assert "espeak-ng synthetic speech" not in out  # the note is about the bundled calls only
    for line in ("call.started", "-> ", "call.ended eof"):
        assert line in out, out
    events = [line for line in (tmp_path / "events.jsonl").read_text().splitlines() if line]
    assert len(events) >= 3


def test_demo_says_what_the_bundled_calls_are(tmp_path: Path) -> None:
    out = run_demo(tmp_path, "--duration", "4")
    assert "caller_calm.wav" in out and "espeak-ng synthetic speech" in out
