"""A private tmux server running one command in a real terminal, for the emovoice-top tests."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from typing import Callable

import pytest


class Tmux:
    """A private tmux server (own socket) running one command in a 160x30 pane."""

    def __init__(self, command: list[str]) -> None:
        if not shutil.which("tmux"):
            pytest.skip("tmux is needed (./dev test installs it)")
        self.socket = f"emovoice-test-{uuid.uuid4().hex[:8]}"
        self.tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "30", " ".join(command))
        self.tmux("set-option", "-t", "top", "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def exited(self) -> bool:
        return self.tmux("display-message", "-p", "-t", "top", "#{pane_dead}").strip() == "1"

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            await asyncio.sleep(0.2)
        raise AssertionError(f"screen never matched; last screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
