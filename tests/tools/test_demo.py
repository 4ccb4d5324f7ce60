"""The README's first command: ``emovoice-daemon demo`` streams calls through the real AudioSocket port."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import espeak, free_port


def demo_command(tmp_path: Path, *args: str) -> list[str]:
    config = {"audiosocket": {"port": free_port()}, "api": {"port": free_port()},
              "events": {"log_path": str(tmp_path / "events.jsonl")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "emovoice_daemon.tools.cli", "demo", "-c", str(tmp_path / "config.yaml"), "--calls", "1", *args]


def run_demo(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run(demo_command(tmp_path, *args), cwd=tmp_path, capture_output=True, text=True, timeout=90,
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


def test_ctrl_c_stops_the_demo_cleanly_even_when_pressed_twice(tmp_path: Path) -> None:
    proc = subprocess.Popen(demo_command(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until a call is live
        if "call.started" in line:
            break
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not turn the shutdown into a traceback
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "stopping" in out
