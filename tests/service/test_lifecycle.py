"""Lifecycle: SIGTERM drains live calls within the deadline, SIGHUP reloads thresholds, a second daemon fails fast."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from bench.loadgen import windows_due
from emovoice_daemon.config import load_config
from emovoice_daemon.outputs.eventlog import EventLog
from emovoice_daemon.scoring.models.loader import DEFAULT_DIR
from emovoice_daemon.service import lifecycle
from emovoice_daemon.service.daemon import Daemon
from emovoice_daemon.tools.simulate import audiosocket_frames
from tests.conftest import DaemonProcess, free_port, start_daemon, stop_daemon
from tests.service.conftest import open_call


def of_call(daemon: DaemonProcess, call_id: str) -> list[dict]:
    return [e for e in daemon.events() if e["call_id"] == call_id]


async def test_sigterm_scores_what_is_buffered_then_exits(tmp_path: Path, speech_8k: np.ndarray) -> None:
    daemon = start_daemon(tmp_path, {"engine": {"max_lag_s": 30.0}})
    try:
        call_id = str(uuid.uuid4())
        _, writer = await open_call(daemon.audiosocket_port, call_id, speech_8k)
        await asyncio.to_thread(daemon.wait_for, lambda ev: any(e["call_id"] == call_id for e in ev), 10)
        await asyncio.sleep(0.5)  # every byte read by the daemon; the call is still live
        assert not any(e["type"] == "call.ended" for e in of_call(daemon, call_id))
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.proc.wait, 15) == 0
        assert time.monotonic() - started < 10  # service.drain_timeout_s
        writer.close()
        events = of_call(daemon, call_id)
        ended = events[-1]
        assert ended["type"] == "call.ended" and ended["reason"] == "shutdown"
        summary = ended["summary"]
        assert summary["windows_scored"] + summary["windows_skipped"] == windows_due(len(speech_8k))
        assert sum(e["type"] == "score" for e in events) == summary["windows_scored"] >= 1
        assert daemon.log_path.read_bytes().endswith(b"\n")
        stderr = daemon.stderr_path.read_text()
        assert "emovoice daemon stopped" in stderr and "Traceback" not in stderr and "ERROR" not in stderr
    finally:
        stop_daemon(daemon)


async def test_drain_past_its_deadline_still_closes_the_event_log(tmp_path: Path) -> None:
    class Hanging:
        config = None
        calls = type("Calls", (), {"legs": {"c:mixed": object()}})()
        event_log = EventLog(tmp_path / "events.jsonl")

        async def stop(self, legs_timeout_s: float) -> None:
            await asyncio.sleep(3600)

    hanging = Hanging()
    hanging.event_log.write({"seq": 1})
    started = time.monotonic()
    assert await lifecycle.drain(hanging, 0.2) is False
    assert time.monotonic() - started < 1
    EventLog(tmp_path / "events.jsonl").close()  # the lock was released: the log was closed


def write_config(path: Path, **sections: dict) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


async def test_reload_applies_escalation_to_live_and_new_legs(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "c.yaml", audiosocket={"port": 0}, api={"port": 0, "token": "t"},
                            events={"log_path": str(tmp_path / "events.jsonl")},
                            history={"path": str(tmp_path / "h.sqlite3")})
    daemon = Daemon(load_config(cfg_path))
    await daemon.start()
    try:
        live = daemon.calls.start_leg("call-1", "mixed", "audiosocket", {})
        assert live.policy.cfg.enter == daemon.classifier.escalation["enter"]  # the model's own, the config sets none
        write_config(cfg_path, audiosocket={"port": 0}, api={"port": 0, "token": "t"},
                     events={"log_path": str(tmp_path / "events.jsonl")}, history={"path": str(tmp_path / "h.sqlite3")},
                     escalation={"enter": 0.8, "alert": 0.9}, notifier={"phrases": {"watch": "calm down"}})
        assert lifecycle.reload_config(daemon) is True
        assert live.policy.cfg.enter == 0.8 and not live.ended
        assert daemon.calls.start_leg("call-2", "mixed", "audiosocket", {}).policy.cfg.enter == 0.8
        assert daemon.notifier.cfg.phrases["watch"] == "calm down"

        cfg_path.write_text("escalation:\n  enter: 2.0\n")
        assert lifecycle.reload_config(daemon) is False  # invalid: nothing changes
        assert live.policy.cfg.enter == 0.8 and daemon.config.escalation.enter == 0.8
    finally:
        await daemon.stop()


async def test_sighup_keeps_live_calls(tmp_path: Path, speech_8k: np.ndarray) -> None:
    daemon = start_daemon(tmp_path)
    try:
        call_id = str(uuid.uuid4())
        _, writer = await open_call(daemon.audiosocket_port, call_id, speech_8k[:16000])
        await asyncio.to_thread(daemon.wait_for, lambda ev: any(e["call_id"] == call_id for e in ev), 10)
        cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
        cfg["escalation"] = {"enter": 0.7}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        daemon.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        rest = audiosocket_frames(call_id, speech_8k[16000:])[1:]  # the same call goes on after the reload
        writer.write(b"".join(rest))
        await writer.drain()
        writer.close()
        events = await asyncio.to_thread(
            daemon.wait_for, lambda ev: any(e["type"] == "call.ended" and e["call_id"] == call_id for e in ev), 15)
        ended = [e for e in events if e["call_id"] == call_id][-1]
        assert ended["reason"] == "eof"
        assert ended["summary"]["windows_scored"] + ended["summary"]["windows_skipped"] == windows_due(len(speech_8k))
        assert daemon.proc.poll() is None
        assert "reload: escalation and notifier settings applied to 1 live legs" in daemon.stderr_path.read_text()
    finally:
        stop_daemon(daemon)


def truncated_model(path: Path) -> Path:
    """A copy of the shipped model directory whose weights file is cut in half."""
    shutil.copytree(DEFAULT_DIR, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return path


def run_second(config: dict, tmp_path: Path, name: str = "second") -> tuple[int, str, float]:
    cfg = write_config(tmp_path / f"{name}.yaml", **config)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "run", "-c", str(cfg)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # hang guard only
    return proc.returncode, proc.stderr, time.monotonic() - started


def test_second_daemon_on_the_same_ports_fails_fast(tmp_path: Path) -> None:
    first = start_daemon(tmp_path)
    try:
        config = yaml.safe_load((tmp_path / "config.yaml").read_text())
        config["events"]["log_path"] = str(tmp_path / "other.jsonl")
        config["model"] = {"path": str(truncated_model(tmp_path / "broken-model"))}  # were it loaded, it would say so
        code, stderr, _ = run_second(config, tmp_path)  # no time bound: "fast" means "before the model loads"
        assert code == 1 and "model.safetensors" not in stderr
        assert (f"cannot start: audiosocket.port: cannot listen on 127.0.0.1:{first.audiosocket_port}: "
                "Address already in use (is another emovoice daemon running?)") in stderr
        assert "Traceback" not in stderr
        assert first.get("/health")[0] == 200

        config["audiosocket"]["port"], config["api"]["port"] = free_port(), free_port()
        config["events"]["log_path"], config["model"] = str(first.log_path), {}
        code, stderr, _ = run_second(config, tmp_path)
        assert code == 1 and "is in use by another process" in stderr
        assert first.get("/health")[0] == 200
    finally:
        stop_daemon(first)


async def test_sigterm_does_not_wait_for_idle_websocket_clients(tmp_path: Path) -> None:
    """Supervisors keep /events open all day: a restart must not sit out the drain deadline for them."""
    daemon = start_daemon(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{daemon.api_port}/events"
            headers = {"Authorization": f"Bearer {daemon.token}"}
            listening = await session.ws_connect(url, headers=headers)
            gone = await session.ws_connect(url, headers=headers)
            await gone.close()  # a client that went away while no event was flowing
            await asyncio.sleep(0.3)
            daemon.proc.send_signal(signal.SIGTERM)
            closed = await asyncio.wait_for(listening.receive(), 30)  # hang guard
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert await asyncio.to_thread(daemon.proc.wait, 120) == 0  # hang guard (13 s seen with load 10 on 2 cores)
        assert "drain took longer" not in daemon.stderr_path.read_text()  # it did not sit out the drain deadline
    finally:
        stop_daemon(daemon)


def test_unusable_files_stop_the_start_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    base = {"audiosocket": {"port": free_port()}, "api": {"port": free_port(), "token": "t"},
            "history": {"path": str(tmp_path / "h.sqlite3")}}
    cases = [
        ({"events": {"log_path": str(tmp_path / "not-a-dir" / "events.jsonl")}}, "events.log_path"),
        ({"events": {"log_path": str(tmp_path / "e.jsonl")}, "notifier": {"agents_file": str(tmp_path / "none.yaml")}},
         "notifier.agents_file: cannot read"),
        ({"events": {"log_path": str(tmp_path / "e.jsonl")}, "model": {"path": str(tmp_path / "no-model")}}, "no-model"),
        ({"events": {"log_path": str(tmp_path / "e.jsonl")},
          "api": {"port": free_port(), "token": "t", "tls_cert": str(tmp_path / "missing.pem")}}, "api.tls_cert"),
        ({"events": {"log_path": str(tmp_path / "e.jsonl")}, "model": {"path": str(truncated_model(tmp_path / "cut"))}},
         "model.safetensors: truncated"),
        ({"events": {"log_path": str(tmp_path / "e.jsonl")},
          "api": {"port": free_port(), "token_file": str(tmp_path / "no-token")}}, "api.token_file: cannot read"),
        ({"events": {"log_path": str(tmp_path / "e.jsonl")}, "history": {"path": str(tmp_path)}},
         "history.path: " + str(tmp_path) + " is a directory"),
    ]
    with ThreadPoolExecutor(2) as pool:  # each start imports torch: two at a time
        results = list(pool.map(lambda i: run_second({**base, **cases[i][0]}, tmp_path, f"case{i}"), range(len(cases))))
    for (_, message), (code, stderr, _) in zip(cases, results):
        assert code == 1 and "emovoice-daemon: cannot start:" in stderr and message in stderr, stderr[-2000:]
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-2000:]


async def test_ctrl_c_that_a_library_swallowed_during_start_up_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt raised inside an import and caught there must not turn the Ctrl-C into nothing."""
    from emovoice_daemon.service import interrupts

    monkeypatch.setattr(interrupts, "_interrupted", False)
    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        assert not interrupts.pending()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs here
        except KeyboardInterrupt:
            pass  # what an over-broad ``except BaseException`` in a library does
        assert lifecycle.stop_on_signals().is_set()
    finally:
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGINT, previous)
