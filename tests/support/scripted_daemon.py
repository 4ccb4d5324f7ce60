"""A daemon subprocess scoring with the scripted ToneClassifier (see scripted_site/), and its fixture."""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import DaemonProcess, running, start_daemon

SCRIPTED_SITE = Path(__file__).resolve().parent / "scripted_site"
AGENT_TOKEN = "agent-1001-token"


def post_json(daemon: DaemonProcess, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.api_port}{path}", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {daemon.token}",
                                          "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def start_scripted_daemon(tmp_path: Path, overrides: dict | None = None) -> DaemonProcess:
    """``emovoice-daemon run`` with the model loader replaced by the ToneClassifier (see scripted_site/)."""
    pythonpath = os.pathsep.join(p for p in (str(SCRIPTED_SITE), os.environ.get("PYTHONPATH", "")) if p)
    config = {"notifier": {"agents": {"1001": AGENT_TOKEN}}, **(overrides or {})}
    return start_daemon(tmp_path, config, env={"PYTHONPATH": pythonpath})


@pytest.fixture
def scripted_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running(start_scripted_daemon(tmp_path)) as d:
        yield d
