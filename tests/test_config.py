"""Config validation: every problem is reported as file:line: key: what is wrong."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from emovoice_daemon.config import Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return info.value.errors


def test_example_config_is_valid_and_documents_the_defaults() -> None:
    example = load_config(REPO / "config.example.yaml")
    assert dataclasses.replace(example, source="<defaults>") == Config()


def test_values_are_typed() -> None:
    cfg = parse_config("pipeline:\n  window_s: 4\n  hop_s: 0.5\naudiosocket:\n  port: 4000\n")
    assert cfg.pipeline.window_s == 4.0 and isinstance(cfg.pipeline.window_s, float)
    assert cfg.audiosocket.port == 4000
    assert cfg.audiosocket.host == "127.0.0.1"  # untouched keys keep the loopback default


def test_each_bad_value_names_file_line_and_key() -> None:
    errors = errors_of("api:\n  port: 70000\n  host: 1\naudiosocket:\n  allow: [nonsense]\n  idle_timeout_s: -1\n")
    assert errors == [
        "c.yaml:2: api.port: must be a port number 0-65535",
        "c.yaml:3: api.host: expected str, got int 1",
        "c.yaml:5: audiosocket.allow: 'nonsense' is not an IP network (e.g. 127.0.0.0/8)",
        "c.yaml:6: audiosocket.idle_timeout_s: must be > 0",
    ]


def test_audiosocket_role_ports_name_known_roles_and_ports() -> None:
    assert errors_of("audiosocket:\n  role_ports: {customer: 9094, boss: 9096}\n") == [
        "c.yaml:2: audiosocket.role_ports: unknown roles ['boss'] (known: mixed, customer, agent)"]
    assert errors_of("audiosocket:\n  role_ports: {agent: 99999}\n") == [
        "c.yaml:2: audiosocket.role_ports: agent: must be a port number 0-65535"]


def test_unknown_keys_and_sections_are_errors() -> None:
    errors = errors_of("api:\n  prot: 1\nnosuch:\n  a: 1\n")
    assert errors[0].startswith("c.yaml:2: api.prot: unknown key")
    assert errors[1].startswith("c.yaml:3: nosuch: unknown section")


def test_booleans_are_not_numbers() -> None:
    assert errors_of("engine:\n  max_batch: true\n") == ["c.yaml:2: engine.max_batch: expected int, got bool True"]


def test_cross_field_rules() -> None:
    errors = errors_of("pipeline:\n  window_s: 1\n  hop_s: 2\nescalation:\n  enter: 0.3\n  exit: 0.5\n")
    assert any("pipeline.hop_s: must not exceed" in e for e in errors)
    assert any("escalation.exit: must be <=" in e for e in errors)


def test_invalid_yaml_reports_its_line() -> None:
    assert errors_of("api:\n  port: [1\n")[0].startswith("c.yaml:3: not valid YAML")


def test_check_config_cli(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("pipeline:\n  hop_s: 0.5\n")
    bad.write_text("pipeline:\n  hop_s: zero\n")
    ok = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "check-config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    ko = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "check-config", str(bad)],
                        capture_output=True, text=True)
    assert ko.returncode == 2
    assert f"{bad}:2: pipeline.hop_s: expected float, got str 'zero'" in ko.stderr


def test_daemon_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("audiosocket:\n  port: -5\n")
    run = subprocess.run([sys.executable, "-m", "emovoice_daemon.tools.cli", "run", "-c", str(bad)],
                         capture_output=True, text=True, timeout=300)  # hang guard only
    assert run.returncode == 2
    assert f"{bad}:2: audiosocket.port: must be a port number 0-65535" in run.stderr


def test_duplicate_keys_at_any_level_are_errors() -> None:
    """YAML keeps the last of two equal keys: a second api section would silently drop a configured token."""
    errors = errors_of("api:\n  token: secret\napi:\n  port: 8766\nescalation:\n  profiles:\n"
                       "    vip: {enter: 0.5, enter: 0.7}\n  enter: 0.6\n  enter: 0.65\n")
    assert errors == ["c.yaml:3: api: duplicate key (first given on line 1)",
                      "c.yaml:7: escalation.profiles.vip.enter: duplicate key (first given on line 7)",
                      "c.yaml:9: escalation.enter: duplicate key (first given on line 8)"]


def test_two_listeners_on_one_port_are_one_line_each() -> None:
    assert errors_of("audiosocket:\n  port: 9094\n  role_ports: {customer: 9094, agent: 9095}\napi:\n  port: 9095\n") == [
        "c.yaml: audiosocket.role_ports.customer: port 9094 is already audiosocket.port",
        "c.yaml: audiosocket.role_ports.agent: port 9095 is already api.port"]
    assert errors_of("ari: {enabled: true}\nrtp: {port: 5070}\nsip: {enabled: true}\n") == [
        "c.yaml: sip.port: port 5070 is already rtp.port"]
    parse_config("ari: {enabled: false}\nrtp: {port: 5070}\nsip: {enabled: true}\n")  # rtp is off: no clash
    parse_config("audiosocket: {port: 0, role_ports: {customer: 0}}\napi: {port: 0}\n")  # 0: any free port
