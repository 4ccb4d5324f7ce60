"""The README's first command: ``emovoice-daemon demo`` streams calls through the real AudioSocket port."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
import yaml

from emovoice_daemon.config import Config
from emovoice_daemon.scoring.models.loader import load_classifier
from emovoice_daemon.tools.batch import score_files
from emovoice_daemon.tools.demo import ALERT_WITHIN_S, bundled_calls, with_demo_agent
from tests.conftest import espeak, free_port


def demo_command(tmp_path: Path, *args: str) -> list[str]:
    config = {"audiosocket": {"port": free_port()}, "api": {"port": free_port()},
              "engine": {"max_lag_s": 30.0},  # a loaded machine must not skip windows (back-pressure is tested elsewhere)
              "events": {"log_path": str(tmp_path / "events.jsonl")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "emovoice_daemon.tools.cli", "demo", "-c", str(tmp_path / "config.yaml"), "--calls", "1", *args]


def run_demo(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run(demo_command(tmp_path, *args), cwd=tmp_path, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_demo_plays_a_recording_through_the_daemon_and_prints_its_events(tmp_path: Path) -> None:
    wav = espeak("Hello. I am calling about my order, it has not arrived yet.", tmp_path / "my_call.wav")
    out = run_demo(tmp_path, "--duration", "10", str(wav))
    assert "Model        encoder (trained)" in out and "Calls        my_call: your recording my_call.wav" in out
    assert "CREMA-D" not in out  # the note is about the bundled calls only
    for line in ("my_call          call.started", "-> ", "call.ended eof"):
        assert line in out, out
    events = [line for line in (tmp_path / "events.jsonl").read_text().splitlines() if line]
    assert len(events) >= 3


def test_bundled_demo_names_its_calls_and_links_the_agent_page_and_emovoice_top(tmp_path: Path) -> None:
    out = run_demo(tmp_path, "--calls", "2", "--duration", "40")  # the angry call's alert comes at 14 s of its audio
    assert "calm-throughout: a calm caller" in out and "calm-then-angry: calm, then increasingly angry" in out
    assert re.search(r"Agent page   http://127\.0\.0\.1:\d+/agent/#agent=201&token=\S+", out), out
    top = re.search(r"Supervisor   (\S+) --url http://127\.0\.0\.1:\d+ --token \S+", out)
    assert top and Path(top[1]).name == "emovoice-top" and shutil.which(top[1]), out  # runnable as printed
    started = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines() if '"call.started"' in line]
    assert {(e["meta"]["name"], e["meta"].get("agent")) for e in started} == {("calm-throughout", None),
                                                                               ("calm-then-angry", "201")}
    assert "espeak" not in out and "CREMA-D" in out
    assert re.search(r"^calm-then-angry +escalation\.raised alert", out, re.M), out
    assert not re.search(r"^calm-throughout +escalation", out, re.M), out


async def test_the_shipped_model_alerts_on_the_angry_call_only_and_within_the_stated_time(tmp_path: Path) -> None:
    """The demo's story, through the daemon's own engine and escalation policy (batch QA runs the same legs)."""
    calls = {c.name: c for c in bundled_calls()}
    for call in calls.values():
        sf.write(tmp_path / f"{call.name}.wav", call.audio, 8000, subtype="PCM_16")
    config = Config()
    config.model.site_stats_path = ""  # the model's own statistics, not what this machine's daemons learnt
    await score_files([tmp_path], tmp_path / "out", config, load_classifier(config.model), progress=False)
    report = {name: json.loads((tmp_path / "out" / f"{name}.json").read_text()) for name in calls}
    assert report["calm-throughout"]["escalations"] == []
    raised = [e for e in report["calm-then-angry"]["escalations"] if e["type"] == "escalation.raised"]
    anger_at = calls["calm-then-angry"].anger_at_s
    assert anger_at is not None and 8 < anger_at < 12
    assert raised and raised[0]["severity"] == "alert", raised
    assert anger_at < raised[0]["at"] <= anger_at + ALERT_WITHIN_S, (raised[0]["at"], anger_at)


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


def test_ctrl_c_during_start_up_exits_cleanly(tmp_path: Path) -> None:
    """Pressed while Python imports torch or the model loads: one line at most, never a traceback."""
    for delay in (0.5, 3.0):
        proc = subprocess.Popen(demo_command(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "COLUMNS": "200"})
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode in (0, 130, -signal.SIGINT), out[-3000:]  # -SIGINT: as a shell reports Ctrl-C
        assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]


def test_the_demo_never_teaches_the_live_site_statistics() -> None:
    config = Config()
    assert config.model.site_stats_path  # the daemon keeps what its site taught it ...
    demo = with_demo_agent(config)
    assert demo.model.site_stats_path == "" and demo.model.path == config.model.path  # ... the demo's loops do not
    assert "201" in demo.notifier.agents
