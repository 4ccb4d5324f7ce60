"""Fixtures shared by every test area: real peers' audio, free ports, a daemon subprocess."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from tests.support.shared_skips import (  # noqa: F401  (hooks: the closing line of ../shared skips)
    pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"


@pytest.fixture(autouse=True)
def _speech_gate_only_where_asked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process engines run without the speech gate unless the test is marked ``speech_gate``: most tests feed
    tones and ramps as stand-ins for speech, which the gate rightly rejects (daemon subprocesses keep it)."""
    if request.node.get_closest_marker("speech_gate") is None:
        from emovoice_daemon.scoring import speech

        monkeypatch.setattr(speech.SpeechGate, "load", classmethod(lambda cls, path=None: None))


@pytest.fixture(autouse=True)
def _own_state_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and each daemon it starts) keeps site statistics, verdicts and refitted models in a directory of
    its own: never the user's ~/.local/state, never what an earlier test learnt."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared not present: {'/'.join(parts)} is needed")
    return path


def fetched_encoder() -> None:
    """Skip the test unless Whisper base was fetched (``emovoice-daemon fetch-encoder``; ./dev test does it)."""
    from emovoice_daemon.scoring.models.whisper import EncoderMissing, resolve_encoder

    try:
        resolve_encoder("whisper-base")
    except EncoderMissing as exc:
        pytest.skip(str(exc))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def espeak(text: str, path: Path, voice: str = "en-us", rate_wpm: int = 160) -> Path:
    """Speech from espeak-ng, converted to 8 kHz mono 16-bit WAV with sox."""
    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        pytest.skip("espeak-ng and sox are needed (./dev test installs them)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def speech_8k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 6 s of espeak-ng speech as 8 kHz int16."""
    import soundfile as sf

    path = espeak("Hello, I am calling about my bill. It is wrong again and I would like it fixed today, please.",
                  tmp_path_factory.mktemp("speech") / "speech.wav")
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == 8000
    return pcm


@dataclass
class DaemonProcess:
    """A daemon running as a subprocess on free loopback ports."""

    proc: subprocess.Popen[bytes]
    audiosocket_port: int
    api_port: int
    token: str
    log_path: Path
    stderr_path: Path

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def events(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float = 30.0) -> list[dict]:
        """Poll the JSONL log until ``predicate(events)`` holds; fail with the daemon's stderr if not."""
        return self._poll(self.events, predicate, timeout, "condition not met")

    def wait_for_stderr(self, *texts: str, timeout: float = 30.0) -> str:
        """Poll the daemon's stderr until every one of ``texts`` is in it (log lines of other connections may
        still be on their way when a call's events are)."""
        return self._poll(self.stderr_path.read_text, lambda stderr: all(t in stderr for t in texts), timeout,
                          f"not all of {list(texts)} in the daemon's stderr")

    def _poll(self, read, done, timeout: float, failure: str):  # type: ignore[no-untyped-def]
        """``read()`` every 0.2 s until ``done`` holds for it; fail with ``failure`` and the daemon's stderr once
        ``timeout`` passes or the daemon exits."""
        deadline = time.monotonic() + timeout
        while True:
            value = read()
            if done(value):
                return value
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{failure} in {timeout}s; daemon stderr:\n{self.stderr_path.read_text()[-3000:]}")
            time.sleep(0.2)


def start_daemon(tmp_path: Path, overrides: dict | None = None, env: dict | None = None,
                 ready_s: float = 180, nofile: int | None = None) -> DaemonProcess:
    """Run ``emovoice-daemon run`` with a temp config and wait until /health answers; ``nofile``: its open-file
    limit (``resource.setrlimit`` in the child). Its state directory is ``tmp_path/state`` unless ``env`` says
    otherwise (a module's daemon starts before the per-test one is set)."""
    as_port, api_port = free_port(), free_port()
    config = {"audiosocket": {"port": as_port}, "api": {"port": api_port, "token": "test-token"},
              "events": {"log_path": str(tmp_path / "events.jsonl")}}
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    stderr_path = tmp_path / "daemon.stderr"
    proc = subprocess.Popen([sys.executable, "-m", "emovoice_daemon.tools.cli", "run", "-c", str(cfg_path)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(stderr_path, "wb"),
                            env={**{k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"},
                                 "XDG_STATE_HOME": str(tmp_path / "state"), **(env or {})},
                            preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                                              (nofile, nofile)))
    daemon = DaemonProcess(proc, config["audiosocket"]["port"], config["api"]["port"], config["api"]["token"],
                           tmp_path / "events.jsonl", stderr_path)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{stderr_path.read_text()[-3000:]}")
        try:
            if daemon.get("/health")[0] == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"daemon not healthy in {ready_s} s:\n{stderr_path.read_text()[-3000:]}")


def terminate(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a child process, SIGKILL it if it is still there after ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_daemon(daemon: DaemonProcess) -> None:
    terminate(daemon.proc)


@contextlib.contextmanager
def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """Stop ``daemon`` when the block ends, however it ends."""
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A running daemon on the shipped default model (the untrained placeholder when none is shipped)."""
    with running(start_daemon(tmp_path)) as d:
        yield d
