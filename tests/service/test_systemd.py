"""The systemd unit, sysusers/tmpfiles snippets and the production config agree and are valid."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emovoice_daemon.config import load_config
from tests.conftest import REPO

SYSTEMD = REPO / "systemd"


def unit_keys(path: Path) -> dict[str, list[str]]:
    """``Section.Key -> [values]`` of a unit file (keys may repeat)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}.{key}", []).append(value)
    return keys


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return unit_keys(SYSTEMD / "emovoice.service")


def test_unit_is_a_hardened_notify_service(unit: dict[str, list[str]]) -> None:
    expected = {"Type": "notify", "NotifyAccess": "main", "User": "emovoice", "ProtectSystem": "strict",
                "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes", "CapabilityBoundingSet": "",
                "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "ExecReload": "/bin/kill -HUP $MAINPID",
                "Restart": "on-failure"}
    for key, value in expected.items():
        assert unit[f"Service.{key}"] == [value], key
    assert int(unit["Service.WatchdogSec"][0]) > 0
    assert unit["Service.SystemCallErrorNumber"] == ["EPERM"]  # a filtered syscall must not kill live calls
    assert "Service.ProcSubset" not in unit  # ProcSubset=pid hides /proc/loadavg, which /health reads


def test_only_history_and_event_log_are_writable_and_match_the_config(unit: dict[str, list[str]]) -> None:
    writable = unit["Service.ReadWritePaths"][0].split()
    assert writable == ["/var/lib/emovoice", "/var/log/emovoice"]
    config = load_config(SYSTEMD / "config.yaml")
    assert str(Path(config.events.log_path).parent) in writable
    assert str(Path(config.history.path).parent) in writable
    assert any(config.debug.record_dir.startswith(w) for w in writable)
    assert config.debug.record_audio is False
    assert config.audiosocket.host == config.api.host == "127.0.0.1"
    drain = config.service.drain_timeout_s
    assert drain < int(unit["Service.TimeoutStopSec"][0])


def test_api_token_comes_from_the_unit_credential(unit: dict[str, list[str]]) -> None:
    name, _, _ = unit["Service.LoadCredential"][0].partition(":")
    assert load_config(SYSTEMD / "config.yaml").api.token_file == f"/run/credentials/emovoice.service/{name}"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    text = (SYSTEMD / "emovoice.service").read_text().replace("/opt/emovoice/venv/bin/emovoice-daemon", "/bin/true")
    (tmp_path / "emovoice.service").write_text(text)  # verify checks that ExecStart exists
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "emovoice.service")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_sysusers_and_tmpfiles_create_user_and_directories(tmp_path: Path) -> None:
    if not shutil.which("systemd-sysusers") or not shutil.which("systemd-tmpfiles"):
        pytest.skip("systemd-sysusers/systemd-tmpfiles not installed")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to chown")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "emovoice.sysusers")], check=True,
                   capture_output=True)
    user = next(line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines())
    assert user[0] == "emovoice" and user[6] == "/usr/sbin/nologin"
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(SYSTEMD / "emovoice.tmpfiles")],
                   check=True, capture_output=True)
    for path in ("var/lib/emovoice", "var/log/emovoice"):
        st = (tmp_path / path).stat()
        assert st.st_uid == int(user[2]) and st.st_mode & 0o777 == 0o750
