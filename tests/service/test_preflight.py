"""check-config finds what `run` would fail on: files the config names, and (on request) taken ports."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from emovoice_daemon.config import parse_config
from emovoice_daemon.service.preflight import file_problems, port_problems, worker_problems
from tests.service.test_lifecycle import truncated_model


def test_every_unusable_file_is_one_problem_naming_its_key(tmp_path: Path) -> None:
    (tmp_path / "empty-token").write_text("\n")
    config = parse_config(f"""
api: {{token_file: {tmp_path}/no-token, tls_cert: {tmp_path}/no-cert.pem}}
notifier: {{agents_file: {tmp_path}/no-agents.yaml}}
model: {{path: {truncated_model(tmp_path / "cut")}}}
history: {{path: {tmp_path}}}
events: {{log_path: {tmp_path}/no-dir/events.jsonl}}
webhook: {{url: "http://127.0.0.1:9/hook", secret_file: {tmp_path}/empty-token}}
""")
    problems = file_problems(config)
    keys = ["api.token_file: cannot read", "api.tls_cert: cannot read", "webhook.secret_file: ", "events.log_path: directory",
            "history.path: ", "model.path: ", "notifier.agents_file: cannot read"]
    assert len(problems) == len(keys), problems
    for key in keys:
        assert any(key in p for p in problems), (key, problems)
    assert any("model.safetensors: truncated" in p for p in problems)
    assert any("is empty" in p for p in problems) and any("is a directory" in p for p in problems)


def test_the_defaults_and_a_good_production_like_config_pass(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0k3n\n")
    (tmp_path / "agents.yaml").write_text('"1001": agent-token\n')
    config = parse_config(f"api: {{token_file: {tmp_path}/token}}\nnotifier: {{agents_file: {tmp_path}/agents.yaml}}\n"
                          f"history: {{path: {tmp_path}/h.sqlite3}}\nevents: {{log_path: {tmp_path}/e.jsonl}}\n")
    assert file_problems(config) == []


def test_check_config_reports_files_and_taken_ports_only_when_asked(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"audiosocket: {{port: {port}}}\napi: {{port: 0, token_file: {tmp_path}/none}}\n"
                       f"events: {{log_path: {tmp_path}/e.jsonl}}\nhistory: {{path: {tmp_path}/h.sqlite3}}\n")
        assert port_problems(parse_config(cfg.read_text())) != []
        cli = [sys.executable, "-m", "emovoice_daemon.tools.cli", "check-config"]
        plain = subprocess.run([*cli, str(cfg)], capture_output=True, text=True, timeout=120)
        ports = subprocess.run([*cli, "--ports", str(cfg)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and f"{cfg}:2: api.token_file: cannot read {tmp_path}/none" in plain.stderr
    assert "audiosocket.port" not in plain.stderr
    assert ports.returncode == 2 and f"audiosocket.port: cannot listen on 127.0.0.1:{port}" in ports.stderr


def check_config(cfg: Path) -> subprocess.CompletedProcess[str]:
    """``emovoice-daemon check-config cfg`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "check-config", str(cfg)],
                          capture_output=True, text=True, timeout=120)


def test_more_worker_processes_than_cores_is_a_problem_for_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"service: {{workers: 100000}}\nevents: {{log_path: {tmp_path}/e.jsonl}}\n"
                   f"history: {{path: {tmp_path}/h.sqlite3}}\n")
    checked = check_config(cfg)
    assert checked.returncode == 2, checked.stderr
    assert f"{cfg}:1: service.workers: 100000 worker processes on " in checked.stderr
    assert worker_problems(parse_config("service: {workers: auto}")) == []
    assert worker_problems(parse_config("service: {workers: 100000}\naudiosocket: {enabled: false}")) == []


def test_a_missing_nats_credentials_file_is_a_problem_when_jetstream_is_on(tmp_path: Path) -> None:
    text = f"jetstream: {{enabled: ENABLED, credentials_file: {tmp_path}/none.creds}}\n"
    assert file_problems(parse_config(text.replace("ENABLED", "false"))) == []
    assert [p for p in file_problems(parse_config(text.replace("ENABLED", "true"))) if "jetstream" in p] == [
        f"jetstream.credentials_file: cannot read {tmp_path}/none.creds: No such file or directory"]


def test_check_config_reports_bad_values_and_unusable_files_together_with_their_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"pipeline:\n  hop_s: -1\nmodel:\n  threads: 1\n  path: {tmp_path}/no-model\n"
                   f"events: {{log_path: {tmp_path}/e.jsonl}}\nhistory: {{path: {tmp_path}/h.sqlite3}}\n")
    done = check_config(cfg)
    problems = done.stderr.splitlines()
    assert done.returncode == 2 and problems[-1] == "configuration cannot start: 2 problem(s)", done.stderr
    assert problems[0] == f"{cfg}:2: pipeline.hop_s: must be > 0"
    assert problems[1].startswith(f"{cfg}:5: model.path: {tmp_path}/no-model: model directory does not exist")
